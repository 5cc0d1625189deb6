rule summarize_models:
    output:
        csv="results/models/parameters.csv",
    log:
        "logs/summarize_models.log",
    benchmark:
        "logs/benchmark/summarize_models.tsv",
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/summarize_models.py"


rule profile:
    priority: 10  # independent of the runs: these fill the end, after the trainings (train_priority)
    output:
        json="results/{dataset}/{model}/profile_{device}.json",
    log:
        "logs/profile/{dataset}/{model}/{device}.log",
    benchmark:
        "logs/benchmark/profile/{dataset}/{model}/{device}.tsv",
    params:
        spec=paper_spec,
        settings=profile_params,
    resources:
        gpu=gpu_count,
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/profile.py"
