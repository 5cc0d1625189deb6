"""Train one model on one fold of one dataset with one seed (Snakemake script)."""

import logging
import sys
from pathlib import Path

import torch

from logvmamba.pipeline import train_run

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
torch.set_num_threads(snakemake.threads)  # Snakemake runs jobs side by side; one pool per job
w = snakemake.wildcards
out_dir = Path(snakemake.output.checkpoint).parent
train_run(snakemake.config, w.model, snakemake.input.marker, out_dir, int(w.seed), snakemake.params.fold)
