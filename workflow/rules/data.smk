rule synthesize:
    output:
        dataset_json="resources/synthetic/{name}/dataset.json",
    log:
        "logs/synthesize/{name}.log",
    params:
        key=synthetic_key,
        seed=config["seed"],
        cases=config.get("synthetic_cases"),
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/synthesize.py"
