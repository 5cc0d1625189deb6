rule prepare_data:
    priority: 100  # every training waits for the data
    output:
        marker="resources/prepared/{dataset}.json",
    log:
        "logs/prepare_data/{dataset}.log",
    benchmark:
        "logs/benchmark/prepare_data/{dataset}.tsv",
    params:
        data_root=config["data_root"],
        synthetic=config["synthetic"],
        cases=config.get("synthetic_cases"),
        seed=config["seeds"][0],
        folder=lambda w: config["dataset_folders"].get(w.dataset),
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/prepare_data.py"


rule split:
    input:
        marker=rules.prepare_data.output.marker,
    priority: 100
    output:
        splits="results/{dataset}/splits_final.json",
    log:
        "logs/split/{dataset}.log",
    benchmark:
        "logs/benchmark/split/{dataset}.tsv",
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/split.py"
