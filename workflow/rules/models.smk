rule summarize_models:
    output:
        csv="results/models/parameters.csv",
    log:
        "logs/summarize_models.log",
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/summarize_models.py"
