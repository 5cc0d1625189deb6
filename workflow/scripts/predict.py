"""Predict the held-out cases with the best checkpoint (Snakemake script)."""

import sys

import torch

from logvmamba.pipeline import predict_run

sys.stderr = open(snakemake.log[0], "w")
torch.set_num_threads(snakemake.threads)  # Snakemake runs jobs side by side; one pool per job
predict_run(snakemake.input.marker, snakemake.input.checkpoint, snakemake.output.predictions, snakemake.params.fold)
