"""The rank-stability figure (Snakemake script)."""

import sys

from logvmamba.reporting.report import rank_figure_from_results

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
rank_figure_from_results(snakemake.config, "results", snakemake.input.configs, snakemake.output.png, snakemake.output.pdf)
