"""Predict the held-out cases with the best checkpoint (Snakemake script)."""

import sys

from logvmamba.pipeline import predict_run

sys.stderr = open(snakemake.log[0], "w")
predict_run(snakemake.input.marker, snakemake.input.checkpoint, snakemake.output.predictions, snakemake.params.fold)
