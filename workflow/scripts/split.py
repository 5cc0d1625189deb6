"""Write the dataset's splits_final.json (Snakemake script)."""

import sys

from logvmamba.pipeline import write_splits

sys.stderr = open(snakemake.log[0], "w")
write_splits(snakemake.input.marker, snakemake.output.splits)
