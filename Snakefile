"""LoG-VMamba reproducibility suite.

Default: synthetic stand-ins on CPU (config/config.yaml). The paper protocol:
--configfile config/paper.yaml (replaces the default config; recipes stay).
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


rule all_metrics:
    input:
        metrics=all_metric_files(),


rule all_profiles:
    input:
        profiles=all_profile_files(),


rule all:
    input:
        metrics=all_metric_files(),
        profiles=all_profile_files(),
        parameters="results/models/parameters.csv",


for _key in config["datasets"]:

    rule:
        name:
            f"metrics_{_key}"
        input:
            metrics=all_metric_files(_key),
