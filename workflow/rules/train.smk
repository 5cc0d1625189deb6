rule train:
    input:
        marker=rules.prepare_data.output.marker,
        splits=rules.split.output.splits,
    priority: train_priority
    output:
        checkpoint="results/{dataset}/{model}/fold{fold}/seed{seed}/checkpoint_best.pt",
        log_csv="results/{dataset}/{model}/fold{fold}/seed{seed}/log.csv",
        done="results/{dataset}/{model}/fold{fold}/seed{seed}/train_done.json",
    log:
        "logs/train/{dataset}/{model}/fold{fold}/seed{seed}.log",
    benchmark:
        "logs/benchmark/train/{dataset}/{model}/fold{fold}/seed{seed}.tsv",
    params:
        fold=lambda w: int(w.fold),
        recipe=train_recipe,
    resources:
        gpu=1,
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/train.py"


rule predict:
    input:
        marker=rules.prepare_data.output.marker,
        checkpoint=rules.train.output.checkpoint,
    priority: 45
    output:
        predictions=directory("results/{dataset}/{model}/fold{fold}/seed{seed}/predictions"),
    log:
        "logs/predict/{dataset}/{model}/fold{fold}/seed{seed}.log",
    benchmark:
        "logs/benchmark/predict/{dataset}/{model}/fold{fold}/seed{seed}.tsv",
    params:
        fold=lambda w: int(w.fold),
        evaluate_on=lambda w: evaluate_on(config, w.dataset),
        inference=predict_settings,
    resources:
        gpu=1,
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/predict.py"


rule evaluate:
    input:
        marker=rules.prepare_data.output.marker,
        predictions=rules.predict.output.predictions,
    priority: 45
    output:
        summary="results/{dataset}/{model}/fold{fold}/seed{seed}/summary.json",
        per_case="results/{dataset}/{model}/fold{fold}/seed{seed}/per_case.csv",
    log:
        "logs/evaluate/{dataset}/{model}/fold{fold}/seed{seed}.log",
    benchmark:
        "logs/benchmark/evaluate/{dataset}/{model}/fold{fold}/seed{seed}.tsv",
    params:
        fold=lambda w: int(w.fold),
        evaluate_on=lambda w: evaluate_on(config, w.dataset),
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/evaluate.py"
