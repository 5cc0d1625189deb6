"""Where a training job's time goes, per network and dataset of an experiment config.

    python -m logvmamba.bench.train [--config config/config.yaml] [--iterations 8] [--threads 1]

For each (dataset, model) the config trains (the ablation variants with ``--ablations``)
it builds the run's network, optimizer, loss and loader exactly as
:func:`logvmamba.train.train` does, on the synthetic stand-in (written under ``--data``
when missing), and times, per training iteration: fetching the batch (reading,
normalising, cropping, augmenting), forward + loss + backward, and the optimizer step;
the loading is timed twice, through the loader the trainer uses and through an uncached
one (every draw reads the case files again), so the two are side by side. Then, per
validation case: reading the case, the sliding-window prediction and the scoring. The
load average is printed with the table: the figures are only as good as the machine is idle.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import time
from pathlib import Path

__all__ = ["measure_run", "main"]

logger = logging.getLogger(__name__)


def _median_ms(values) -> float:
    return 1000 * statistics.median(values) if values else float("nan")


def measure_run(config: dict, model_name: str, ds, iterations: int = 8, warmup: int = 2) -> dict:
    """Per-iteration and per-validation-case timings (milliseconds, medians) of one run."""
    import torch

    from logvmamba.checkpoint import build_model, model_args
    from logvmamba.config import resolve_recipe
    from logvmamba.data import make_loader, split_case_ids
    from logvmamba.data.loading import load_case
    from logvmamba.evaluation import score_case
    from logvmamba.infer import logits_to_label, predict_resampled, regions_order
    from logvmamba.train import (SegmentationLoss, TrainLoader, amp_mode, backward_context, build_optimizer,
                                 seed_everything, training_data_spec)

    recipe = resolve_recipe(config, model_name, ds)
    data = training_data_spec(ds, 0)
    seed_everything(0)
    model = build_model(model_args(recipe, data))
    optimizer = build_optimizer(model, recipe)
    loss_fn = SegmentationLoss(ds.has_regions, recipe["dice_weight"], recipe["ce_weight"])
    device = torch.device("cpu")
    amp_dtype, _ = amp_mode(recipe["amp"], device)
    steps = warmup + iterations

    def batches(loader):
        """Each batch and the seconds it took to fetch."""
        it = iter(loader)
        for _ in range(steps):
            t0 = time.perf_counter()
            batch = next(it)
            yield batch, time.perf_counter() - t0

    loader = TrainLoader(ds, recipe, fold=0)
    uncached = make_loader(ds, "train", fold=0, patch_size=recipe["patch_size"], batch_size=recipe["batch_size"],
                           seed=1, samples_per_epoch=steps * recipe["batch_size"], spacing=recipe.get("target_spacing"))
    load = loader.epoch(1, steps * recipe["batch_size"])
    times = dict(load=[], load_uncached=[], fwd_bwd=[], optimizer=[])
    model.train()
    for i, ((batch, fetch), (_, fetch_uncached)) in enumerate(zip(batches(load), batches(uncached))):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
            output = model(batch["image"])
        loss = loss_fn(output, batch["label"])
        optimizer.zero_grad(set_to_none=True)
        with backward_context(device, amp_dtype):
            loss.backward()
        t1 = time.perf_counter()
        if recipe["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["grad_clip"])
        optimizer.step()
        t2 = time.perf_counter()
        if i >= warmup:
            for key, value in (("load", fetch), ("load_uncached", fetch_uncached), ("fwd_bwd", t1 - t0),
                               ("optimizer", t2 - t1)):
                times[key].append(value)

    val = dict(read=[], window=[], score=[])
    for case_id in split_case_ids(ds, "val", 0)[: recipe["val_cases"] or None]:
        t0 = time.perf_counter()
        case = load_case(ds, case_id)
        t1 = time.perf_counter()
        logits = predict_resampled(model, case.image, case.spacing, recipe.get("target_spacing"), recipe["patch_size"],
                                   recipe["overlap"], sw_batch_size=recipe.get("sw_batch_size", 1))
        pred = logits_to_label(logits, regions_order(ds))
        t2 = time.perf_counter()
        score_case(ds.info, pred, case)
        t3 = time.perf_counter()
        for key, value in (("read", t1 - t0), ("window", t2 - t1), ("score", t3 - t2)):
            val[key].append(value)

    row = {key: _median_ms(v) for key, v in times.items()}
    step = row["load"] + row["fwd_bwd"] + row["optimizer"]
    row.update(iteration=step, load_share=row["load"] / step,
               load_share_uncached=row["load_uncached"] / (step - row["load"] + row["load_uncached"]),
               val_read=_median_ms(val["read"]), val_window=_median_ms(val["window"]),
               val_score=_median_ms(val["score"]), val_cases=len(val["read"]),
               validation=1000 * sum(sum(v) for v in val.values()),
               patch="x".join(map(str, recipe["patch_size"])), batch=recipe["batch_size"],
               arch=recipe["arch"])
    return row


def _datasets(config: dict, data_root: Path) -> dict:
    """Each configured dataset's synthetic stand-in, prepared as the workflow's prepare_data rule does."""
    import tempfile

    from logvmamba.data import RawDataset, get_splits
    from logvmamba.pipeline import prepare_dataset

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key in config["datasets"]:
            logger.info("preparing the synthetic %s under %s", key, data_root)
            ds = RawDataset(prepare_dataset(key, data_root, True, Path(tmp) / f"{key}.json",
                                            cases=config.get("synthetic_cases")))
            get_splits(ds)
            out[key] = ds
    return out


def main(argv=None) -> None:
    import pandas as pd
    import torch

    from logvmamba.config import ablation_models, load_config, supports
    from logvmamba.provenance import load_average

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", nargs="*", default=["config/config.yaml"])
    parser.add_argument("--data", default="resources/data", help="where the synthetic datasets are (or are written)")
    parser.add_argument("--iterations", type=int, default=8, help="timed iterations per run (after 2 warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a workflow job's share of the cores)")
    parser.add_argument("--ablations", action="store_true", help="also the ablation variants, on their datasets")
    parser.add_argument("--datasets", nargs="*", help="subset of the config's datasets")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    config = load_config(*args.config)
    if args.datasets:
        config["datasets"] = args.datasets
    datasets = _datasets(config, Path(args.data))
    load_before = load_average()
    rows = []
    for key, ds in datasets.items():
        models = list(config["models"])
        if args.ablations and key in config.get("ablations", {}).get("datasets", []):
            models += [m for m in ablation_models(config) if m not in models]
        for name in models:
            if not supports(config, name, ds.spatial_dims):
                continue
            logger.info("%s / %s ...", key, name)
            rows.append(dict(dataset=key, model=name, **measure_run(config, name, ds, args.iterations)))
    table = pd.DataFrame(rows)
    cols = ["dataset", "model", "patch", "batch", "load", "load_uncached", "fwd_bwd", "optimizer", "iteration",
            "load_share", "load_share_uncached", "val_cases", "val_read", "val_window", "val_score", "validation"]
    pd.set_option("display.width", 250)
    print(f"ms per training iteration (median of {args.iterations}) and per validation case; "
          f"{args.threads} thread(s), {os.cpu_count()} cores; load average before {load_before}, "
          f"after {load_average()}")
    print("load: the trainer's loader; load_uncached: every draw reads the case files again (side by side)")
    print(table[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}"))


if __name__ == "__main__":
    main()
