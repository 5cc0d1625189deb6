"""Parameter counts of the paper configurations (Snakemake script)."""

import sys

import pandas as pd

from logvmamba.io import atomic_write
from logvmamba.models.summary import summary_rows

sys.stderr = open(snakemake.log[0], "w")
table = pd.DataFrame(summary_rows(mixers=("vanilla", "local", "global", "log")))
with atomic_write(snakemake.output.csv) as tmp:
    table.to_csv(tmp, index=False)
