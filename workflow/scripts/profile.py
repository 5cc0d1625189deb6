"""Parameters, FLOPs, latency and memory of one model on one dataset and device (Snakemake script)."""

import json
import sys

import torch

from logvmamba.config import register_datasets
from logvmamba.io import atomic_write_text
from logvmamba.profiling.report import profile_settings

sys.stderr = open(snakemake.log[0], "w")
torch.set_num_threads(snakemake.threads)  # Snakemake runs jobs side by side; one pool per job
register_datasets(snakemake.config)  # a user dataset's shapes for input_spec
spec, w = snakemake.params.spec, snakemake.wildcards
result = profile_settings(spec["arch"], w.dataset, w.device, snakemake.params.settings, spec["model_kwargs"],
                          threads=snakemake.threads)
atomic_write_text(snakemake.output.json, json.dumps(result, indent=2) + "\n")
