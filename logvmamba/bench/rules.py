"""Wall time of a workflow run per rule, from Snakemake's ``benchmark:`` files.

    python -m logvmamba.bench.rules [logs/benchmark]

Every rule of the workflow writes ``logs/benchmark/{rule}/....tsv`` (Snakemake's
columns: ``s`` wall seconds, ``max_rss`` MiB, ``cpu_time`` seconds, ...). The table
gives per rule the jobs, their summed and mean wall seconds, the share of all
job seconds and the largest max_rss. Jobs run side by side, so the summed job
seconds exceed the run's wall time. (Snakemake's ``cpu_time`` is left out: it is
sampled, and a job of under half a minute reports its first samples only.) A rule
file directly under the folder (``tables.tsv``) is named by its stem.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def rule_times(root: str | Path) -> pd.DataFrame:
    """One row per rule: jobs, wall_s (sum), mean_s, share (of all job seconds), max_rss_MiB."""
    root = Path(root)
    rows = []
    for tsv in sorted(root.rglob("*.tsv")):
        rule = tsv.relative_to(root).parts[0].removesuffix(".tsv")
        try:
            frame = pd.read_csv(tsv, sep="\t")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise ValueError(f"{tsv}: not a Snakemake benchmark file ({err})") from None
        if "s" not in frame.columns or frame.empty:
            raise ValueError(f"{tsv}: not a Snakemake benchmark file (no 's' column or no row)")
        # Snakemake writes "NA" where it could not read a job's memory.
        rss = pd.to_numeric(frame["max_rss"], errors="coerce").iloc[-1] if "max_rss" in frame else float("nan")
        rows.append(dict(rule=rule, s=float(frame["s"].iloc[-1]), max_rss=rss))
    if not rows:
        raise ValueError(f"{root}: no benchmark files (run the workflow first)")
    jobs = pd.DataFrame(rows)
    table = jobs.groupby("rule").agg(jobs=("s", "size"), wall_s=("s", "sum"), mean_s=("s", "mean"),
                                     max_rss_MiB=("max_rss", "max"))
    table["share"] = table["wall_s"] / table["wall_s"].sum()
    return table.sort_values("wall_s", ascending=False).reset_index()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="logs/benchmark")
    args = parser.parse_args(argv)
    try:
        table = rule_times(args.root)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
