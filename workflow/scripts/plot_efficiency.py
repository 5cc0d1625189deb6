"""Figure 5: score against GFLOPs, parameters and latency (Snakemake script)."""

import sys
from pathlib import Path

from logvmamba.reporting.report import figures_from_results

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
figures_from_results(snakemake.config, "results", snakemake.input.published, snakemake.input.configs,
                     Path(snakemake.output.figures[0]).parent)
