rule train:
    input:
        marker="resources/prepared/{dataset}.json",
        splits="results/{dataset}/splits_final.json",
    output:
        checkpoint="results/{dataset}/{model}/seed{seed}/checkpoint_best.pt",
        log_csv="results/{dataset}/{model}/seed{seed}/log.csv",
        done="results/{dataset}/{model}/seed{seed}/train_done.json",
    log:
        "logs/train/{dataset}/{model}/seed{seed}.log",
    params:
        fold=config["fold"],
        recipe=train_recipe,
    resources:
        gpu=1,
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/train.py"


rule predict:
    input:
        marker="resources/prepared/{dataset}.json",
        checkpoint="results/{dataset}/{model}/seed{seed}/checkpoint_best.pt",
    output:
        predictions=directory("results/{dataset}/{model}/seed{seed}/predictions"),
    log:
        "logs/predict/{dataset}/{model}/seed{seed}.log",
    params:
        fold=config["fold"],
        inference=predict_settings,
    resources:
        gpu=1,
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/predict.py"


rule evaluate:
    input:
        marker="resources/prepared/{dataset}.json",
        predictions="results/{dataset}/{model}/seed{seed}/predictions",
    output:
        summary="results/{dataset}/{model}/seed{seed}/summary.json",
        per_case="results/{dataset}/{model}/seed{seed}/per_case.csv",
    log:
        "logs/evaluate/{dataset}/{model}/seed{seed}.log",
    params:
        fold=config["fold"],
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/evaluate.py"
