"""Generate or locate one dataset (Snakemake script)."""

import sys

from logvmamba.pipeline import prepare_dataset

sys.stderr = open(snakemake.log[0], "w")
p = snakemake.params
prepare_dataset(snakemake.wildcards.dataset, p.data_root, p.synthetic, snakemake.output.marker, p.cases, p.seed, p.folder)
