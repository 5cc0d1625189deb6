rule stats:
    input:
        unpack(run_files),
    output:
        csv="results/tables/stats_{dataset}.csv",
    log:
        "logs/stats/{dataset}.log",
    benchmark:
        "logs/benchmark/stats/{dataset}.tsv",
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/stats.py"


rule tables:
    input:
        metrics=all_metric_files(),
        per_case=[p.replace("summary.json", "per_case.csv") for p in all_metric_files()],
        profiles=all_profile_files(),
        stats=stats_files(),
        published=REFERENCE,
        configs=config_files(),
    output:
        tables=[
            report(
                path,
                caption="../report/tables.rst",
                category="Tables",
                labels={"table": Path(path).stem, "format": Path(path).suffix[1:]},
            )
            for path in table_files()
            if path.endswith(".html")
        ],
        other=[path for path in table_files() if not path.endswith(".html")],
        provenance="results/tables/provenance.json",
    log:
        "logs/tables.log",
    benchmark:
        "logs/benchmark/tables.tsv",
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/tables.py"


rule plot_efficiency:
    input:
        metrics=all_metric_files(ablations=False),
        profiles=all_profile_files(ablations=False),
        published=REFERENCE,
        configs=config_files(),
    output:
        figures=[
            report(path, caption="../report/figure5.rst", category="Figure 5", labels={"x": Path(path).stem.split("_")[-1]})
            for path in figure_files()
            if path.endswith(".png")
        ],
        pdf=[path for path in figure_files() if path.endswith(".pdf")],
    log:
        "logs/plot_efficiency.log",
    benchmark:
        "logs/benchmark/plot_efficiency.tsv",
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/plot_efficiency.py"


rule plot_ranks:
    input:
        per_case=[p.replace("summary.json", "per_case.csv") for p in all_metric_files(ablations=False)],
        configs=config_files(),
    output:
        png=report("results/figures/rank_stability.png", caption="../report/ranks.rst", category="Statistics"),
        pdf="results/figures/rank_stability.pdf",
    log:
        "logs/plot_ranks.log",
    benchmark:
        "logs/benchmark/plot_ranks.tsv",
    conda:
        "../envs/suite.yaml"
    script:
        "../scripts/plot_ranks.py"
