"""The paper's tables with published numbers beside ours (Snakemake script)."""

import sys
from pathlib import Path

from logvmamba.reporting.report import tables_from_results

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
tables_from_results(snakemake.config, "results", snakemake.input.published, snakemake.input.configs,
                    Path(snakemake.output.provenance).parent)
