"""LoG-VMamba reproducibility suite. Default: synthetic data on CPU (config/default.yaml)."""

from snakemake.utils import min_version, validate

min_version("8.0")


configfile: "config/default.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"


rule all:
    input:
        datasets=dataset_markers(),
        parameters="results/models/parameters.csv",
