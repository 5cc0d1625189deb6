"""Predict the held-out cases with the best checkpoint (Snakemake script)."""

import logging
import sys

import torch

from logvmamba.pipeline import predict_run

sys.stderr = open(snakemake.log[0], "w")
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
torch.set_num_threads(snakemake.threads)  # Snakemake runs jobs side by side; one pool per job
settings = snakemake.params.inference
predict_run(snakemake.input.marker, snakemake.input.checkpoint, snakemake.output.predictions, snakemake.params.fold,
            tta=settings["tta"], overlap=settings["overlap"], evaluate_on=snakemake.params.evaluate_on)
