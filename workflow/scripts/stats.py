"""Bootstrap CIs and paired Wilcoxon tests of one dataset's runs (Snakemake script)."""

import sys

from logvmamba.reporting.report import statistics_from_results

sys.stderr = sys.stdout = open(snakemake.log[0], "w")
statistics_from_results(snakemake.config, "results", snakemake.wildcards.dataset, snakemake.output.csv)
