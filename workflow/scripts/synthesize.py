"""Write one synthetic stand-in dataset (Snakemake script)."""

import sys
from pathlib import Path

from logvmamba.data.synthetic import generate

sys.stderr = open(snakemake.log[0], "w")
root = Path(snakemake.output.dataset_json).parent.parent
generate(snakemake.params.key, root, seed=snakemake.params.seed, num_cases=snakemake.params.cases, overwrite=True)
