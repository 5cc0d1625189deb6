"""Read the workflow's results into long tables.

- :func:`load_runs`: one value per (dataset, model, fold, seed, metric) from ``summary.json``;
- :func:`load_cases`: per-case values from ``per_case.csv`` (the region means added);
- :func:`load_budget`: training wall time, device-hours and peak memory per run;
- :func:`load_profiles`: parameters, FLOPs, latency and memory from ``profile_<device>.json``;
- :func:`load_reference`: the published numbers (``results/reference/reference_results.csv``);
- :func:`provenance`: synthetic or real data, devices, config files and commit.

A missing or malformed file raises :class:`ResultsError` naming it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd

from logvmamba.data import get_info
from logvmamba.data.registry import registered

__all__ = [
    "BUDGET_COLUMNS", "HIGHER_IS_BETTER", "REFERENCE_METRIC", "SOURCES", "ResultsError",
    "load_runs", "load_cases", "load_budget", "load_profiles", "run_dir", "load_reference", "published", "provenance",
]

class _HigherIsBetter(Mapping):
    """metric -> whether higher is better: every score but the HD95 distances (any dataset's metrics)."""

    def __getitem__(self, metric: str) -> bool:
        return not str(metric).startswith("HD95")

    def __iter__(self):
        return iter(dict.fromkeys(m for info in registered().values() for m in info.metrics))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def dataset_title(key: str) -> str:
    """A dataset's name in table headers and figure panels (``"Nuclei (user dataset)"`` for a user dataset)."""
    info = get_info(key)
    return f"{info.short_title} (user dataset)" if info.user else info.short_title


def user_dataset_note(datasets: Iterable[str]) -> str:
    """One sentence naming the user datasets among ``datasets`` (empty when there are none)."""
    users = [get_info(d) for d in datasets if get_info(d).user]
    if not users:
        return ""
    return "User datasets: " + "; ".join(f"{i.key} = {i.nnunet_name} ({i.download_note})" for i in users) + "."


# A dataset's columns, main and figure metric are facts of the dataset (``DATASETS[key]``);
# the direction is a fact of the metric: distances are better low.
HIGHER_IS_BETTER = _HigherIsBetter()
# Our metric names -> the reference file's.
REFERENCE_METRIC = {"DSC": "dsc", "NSD": "nsd", "F1": "f1", "Dice_mean": "dice_mean_cv5", "params_M": "params_M", "gflops": "gflops"}
SOURCES = {
    "swin-umamba-paper-table": "Swin-UMamba paper tables (arXiv 2402.03302)",
    "logvmamba-paper-fig5": "LoG-VMamba paper Fig. 5, read off the plot (approximate)",
    "nnunet-revisited-table": ("nnU-Net Revisited (arXiv 2404.09556) as tabulated in nnU-Net v2's resenc_presets.md: "
                               "5-fold CV Dice (BraTS 2021, ACDC), training hours and VRAM on one A100"),
}
MEAN_OF = {"Dice_mean": "Dice_", "HD95_mean": "HD95_"}


class ResultsError(ValueError):
    """A result file that is missing or cannot be read."""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: file not found (run the workflow target that makes it)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResultsError(f"{path}: not valid JSON ({err})") from None


def run_dir(root: str | Path, dataset: str, model: str, fold: int, seed: int) -> Path:
    """The folder of one run of the workflow."""
    return Path(root) / dataset / model / f"fold{fold}" / f"seed{seed}"


def load_runs(root: str | Path, grid: Iterable[tuple[str, str, int, int]]) -> pd.DataFrame:
    """Columns ``dataset, model, fold, seed, metric, value, synthetic`` for the runs of ``grid``."""
    rows = []
    for dataset, model, fold, seed in grid:
        path = run_dir(root, dataset, model, fold, seed) / "summary.json"
        summary = _read_json(path)
        for metric in get_info(dataset).metrics:
            value = summary.get(metric)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ResultsError(f"{path}: no numeric {metric!r}")
            rows.append(dict(dataset=dataset, model=model, fold=int(fold), seed=int(seed), metric=metric,
                             value=float(value), synthetic=bool(summary.get("synthetic"))))
    return pd.DataFrame(rows, columns=["dataset", "model", "fold", "seed", "metric", "value", "synthetic"])


def load_cases(root: str | Path, grid: Iterable[tuple[str, str, int, int]]) -> pd.DataFrame:
    """Columns ``dataset, model, fold, seed, case_id, metric, value``; BraTS/ACDC region means per case."""
    frames = []
    for dataset, model, fold, seed in grid:
        path = run_dir(root, dataset, model, fold, seed) / "per_case.csv"
        try:
            table = pd.read_csv(path, dtype={"case_id": str})
        except FileNotFoundError:
            raise ResultsError(f"{path}: file not found (run the workflow target that makes it)") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
            raise ResultsError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
        metrics = list(get_info(dataset).metrics)
        for name, prefix in MEAN_OF.items():
            if name in metrics:
                parts = [c for c in table.columns if c.startswith(prefix)]
                table[name] = table[parts].mean(axis=1, skipna=False)
        missing = [m for m in metrics if m not in table.columns]
        if "case_id" not in table.columns or missing:
            raise ResultsError(f"{path}: missing columns {(['case_id'] if 'case_id' not in table else []) + missing}")
        long = table.melt(id_vars="case_id", value_vars=metrics, var_name="metric", value_name="value")
        frames.append(long.assign(dataset=dataset, model=model, fold=int(fold), seed=int(seed)))
    columns = ["dataset", "model", "fold", "seed", "case_id", "metric", "value"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


BUDGET_COLUMNS = ("dataset", "model", "fold", "seed", "train_hours", "device_hours", "peak_memory_MiB",
                  "peak_memory_kind", "device")


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def load_budget(root: str | Path, grid: Iterable[tuple[str, str, int, int]]) -> pd.DataFrame:
    """Training budget per run (:data:`BUDGET_COLUMNS`) from ``train_done.json`` and ``log.csv``.

    ``train_hours`` is the wall time of the epochs (``log.csv``'s seconds, validation included),
    ``device_hours`` that times the processes (GPUs) of the run; NaN where a run predates them.
    """
    rows = []
    for dataset, model, fold, seed in grid:
        run = run_dir(root, dataset, model, fold, seed)
        done = _read_json(run / "train_done.json")
        seconds = _number(done.get("train_seconds"))
        if math.isnan(seconds) and (run / "log.csv").is_file():
            try:
                seconds = float(pd.read_csv(run / "log.csv")["seconds"].sum())
            except (pd.errors.ParserError, pd.errors.EmptyDataError, KeyError) as err:
                raise ResultsError(f"{run / 'log.csv'}: not a training log ({err})") from None
        world = done.get("world_size") or 1
        rows.append(dict(dataset=dataset, model=model, fold=int(fold), seed=int(seed), train_hours=seconds / 3600,
                         device_hours=seconds * world / 3600, peak_memory_MiB=_number(done.get("peak_memory_MiB")),
                         peak_memory_kind=done.get("peak_memory_kind") or "", device=done.get("device") or ""))
    return pd.DataFrame(rows, columns=list(BUDGET_COLUMNS))


def _median_ms(runtime: Mapping | None, mode: str) -> float:
    entry = (runtime or {}).get(mode) or {}
    median = (entry.get("latency_s") or {}).get("median")
    return float(median) * 1e3 if median is not None else math.nan


def _peak_mib(runtime: Mapping | None, mode: str) -> float:
    memory = ((runtime or {}).get(mode) or {}).get("memory") or {}
    value = memory.get("peak_increase_bytes")
    return float(value) / 2**20 if value is not None else math.nan


def _load(value) -> float:
    """The 1-minute load average of a profile's provenance (a list or a "1.0 0.5 0.2" string)."""
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    try:
        return float(value[0])
    except (TypeError, ValueError, IndexError):
        return math.nan


def _size(spec: Mapping | None) -> str:
    return "x".join(map(str, spec["img_size"])) if spec else ""


def load_profiles(root: str | Path, pairs: Iterable[tuple[str, str]], devices: Sequence[str]) -> pd.DataFrame:
    """One row per (dataset, model, device): params, GFLOPs, latency (ms) and peak memory (MiB)."""
    rows = []
    for dataset, model in pairs:
        for device in devices:
            path = Path(root) / dataset / model / f"profile_{device}.json"
            prof = _read_json(path)
            try:
                flops = prof.get("flops") or {}
                runtime = prof.get("runtime")
                info = prof.get("provenance") or {}
                rows.append(dict(
                    dataset=dataset, model=model, device=device, arch=prof["model"],
                    params_M=prof["params"]["total"] / 1e6,
                    gflops=float(flops["gflops"]) if flops.get("gflops") is not None else math.nan,
                    flops_input=_size(prof.get("input")),
                    runtime_input=_size(prof.get("runtime_input")) if runtime else "",
                    latency_inference_ms=_median_ms(runtime, "inference"),
                    latency_train_ms=_median_ms(runtime, "train"),
                    memory_inference_MiB=_peak_mib(runtime, "inference"),
                    memory_train_MiB=_peak_mib(runtime, "train"),
                    device_name=info.get("gpu") or info.get("cpu") or device,
                    threads=info.get("threads"),
                    load=_load(info.get("load_average")),
                    commit=info.get("git_commit"),
                ))
            except (KeyError, TypeError, ValueError) as err:
                raise ResultsError(f"{path}: not a profile of the suite ({type(err).__name__}: {err})") from None
    return pd.DataFrame(rows)


def load_reference(path: str | Path) -> pd.DataFrame:
    """The published numbers: ``source, dataset, method, metric, value, note`` plus ``value_text``
    (the value as printed in the source, for its decimals)."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise ResultsError(f"{path}: file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ResultsError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
    missing = {"source", "dataset", "method", "metric", "value"} - set(table.columns)
    if missing:
        raise ResultsError(f"{path}: missing columns {sorted(missing)}")
    table["value_text"] = table["value"].str.strip()
    table["value"] = pd.to_numeric(table["value_text"], errors="coerce")
    return table


def published(reference: pd.DataFrame, dataset: str, model: str, metric: str, source: str) -> float:
    """A published value (our metric name) or NaN."""
    name = REFERENCE_METRIC.get(metric)
    hit = reference[(reference.source == source) & (reference.dataset == dataset)
                    & (reference.method == model) & (reference.metric == name)]
    return float(hit.value.iloc[0]) if len(hit) else math.nan


def provenance(root: str | Path, grid: Sequence[tuple[str, str, int, int]], configs: Sequence[str],
               profiles: pd.DataFrame | None = None) -> dict:
    """Where the numbers came from: data kind, training and profiling devices, configs, commit."""
    from logvmamba.provenance import git_commit

    synthetic, devices = set(), set()
    for dataset, model, fold, seed in grid:
        run = run_dir(root, dataset, model, fold, seed)
        synthetic.add(bool(_read_json(run / "summary.json").get("synthetic")))
        done = run / "train_done.json"
        if done.is_file():
            info = _read_json(done)
            if info.get("device_name"):
                world = info.get("world_size") or 1
                name = info["device_name"] if info.get("device") == "cuda" else f"cpu ({info['device_name']})"
                devices.add(name + (f" x{world}" if world > 1 else ""))
    commit, dirty = git_commit(short=True)
    data = "mixed synthetic and real" if len(synthetic) > 1 else ("synthetic" if synthetic == {True} else "real")
    profile_devices = sorted({f"{r.device}: {r.device_name}" for r in profiles.itertuples()}) if profiles is not None and len(profiles) else []
    return {
        "data": data,
        "train_devices": sorted(devices) or ["unknown"],
        "profile_devices": profile_devices,
        "configs": [Path(c).name for c in configs],
        "commit": (commit or "unknown") + ("+dirty" if dirty else ""),
        "runs": len(grid),
    }
