"""Score the predictions by the dataset's protocol (Snakemake script)."""

import sys
from pathlib import Path

from logvmamba.pipeline import evaluate_run

sys.stderr = open(snakemake.log[0], "w")
out_dir = Path(snakemake.output.summary).parent
evaluate_run(snakemake.input.marker, snakemake.input.predictions, out_dir, snakemake.params.fold, snakemake.params.evaluate_on)
