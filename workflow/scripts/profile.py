"""Parameters, FLOPs, latency and memory of one model on one dataset and device (Snakemake script)."""

import json
import sys

from logvmamba.io import atomic_write_text
from logvmamba.profiling import profile_model

sys.stderr = open(snakemake.log[0], "w")
s, w = snakemake.params.settings, snakemake.wildcards
result = profile_model(snakemake.params.arch, w.dataset, device=w.device, size=s["size"], runtime=s["runtime"], runs=s["runs"])
atomic_write_text(snakemake.output.json, json.dumps(result, indent=2) + "\n")
