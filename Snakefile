"""LoG-VMamba reproducibility suite.

Default: synthetic stand-ins on CPU (config/config.yaml). The paper protocol:
--configfile=config/paper.yaml (replaces the default config; the packaged recipes
stay). Main target: all_tables (tables, statistics, Figure 5); figure5 alone; then
snakemake --report results/report.html.
"""

from snakemake.utils import min_version, validate

from logvmamba.config import RECIPES, SCHEMA, validate_config

min_version("8.0")


# The recipes and the schema are package data (one copy, also read by logvmamba.config);
# the default config lives in the checkout.
configfile: str(RECIPES)


if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/config/config.yaml"


# our check first: one line naming the key and value (Snakemake's prints the schema);
# Snakemake's then fills in the schema's defaults
validate_config(config, ", ".join(map(str, workflow.configfiles)) or "config")
validate(config, str(SCHEMA))


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
    plot_ranks,


rule all_tables:
    input:
        tables=rules.tables.output,
        figures=rules.plot_efficiency.output,
        ranks=rules.plot_ranks.output,


rule all_metrics:
    input:
        metrics=all_metric_files(),


rule all_profiles:
    input:
        profiles=all_profile_files(),


rule figure5:
    input:
        figures=rules.plot_efficiency.output,


rule all:
    input:
        tables=rules.tables.output,
        figures=rules.plot_efficiency.output,
        ranks=rules.plot_ranks.output,
        parameters=rules.summarize_models.output.csv,


# A target rule takes no wildcards, so each documented metrics_<dataset> target is a
# rule of its own; the loop over the config's datasets is the one place that says so.
for _key in config["datasets"]:

    rule:
        name:
            f"metrics_{_key}"
        input:
            metrics=all_metric_files(_key),
