"""LoG-VMamba reproducibility suite.

Default: synthetic stand-ins on CPU (config/config.yaml). The paper protocol:
--configfile config/paper.yaml (replaces the default config; recipes stay).
Main target: all_tables (tables, statistics, Figure 5); figure5 alone; then
snakemake --report results/report.html.
"""

from snakemake.utils import min_version, validate

min_version("8.0")


# Config paths are relative to the working directory; these two live in the checkout.
configfile: f"{workflow.basedir}/config/recipes.yaml"


if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


# Aggregation is seconds of work: on a cluster it runs where Snakemake runs.
localrules:
    all_tables,
    all_metrics,
    all_profiles,
    all,
    figure5,
    stats,
    tables,
    plot_efficiency,


rule all_tables:
    input:
        tables=table_files(),
        stats=stats_files(),
        figures=figure_files(),


rule all_metrics:
    input:
        metrics=all_metric_files(),


rule all_profiles:
    input:
        profiles=all_profile_files(),


rule figure5:
    input:
        figures=figure_files(),


rule all:
    input:
        tables=table_files(),
        figures=figure_files(),
        parameters="results/models/parameters.csv",


for _key in config["datasets"]:

    rule:
        name:
            f"metrics_{_key}"
        input:
            metrics=all_metric_files(_key),
