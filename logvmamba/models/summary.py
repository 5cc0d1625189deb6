"""Parameter counts of the LoG-VMamba networks at the paper configurations.

Usage: ``python -m logvmamba.models.summary [--ablations]``
"""

from __future__ import annotations

import argparse

from logvmamba import create_model
from logvmamba.data import DATASETS

PAPER_MODEL = "logvmamba"  # the 2D or 3D network by the dataset's spatial dims


def count_parameters(model) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def summary_rows(mixers=("log",)) -> list[dict]:
    rows = []
    for dataset, info in DATASETS.items():
        name, dims, cin, cout, patch = PAPER_MODEL, info.spatial_dims, info.in_channels, info.num_outputs, info.patch_size
        for mixer in mixers:
            model = create_model(name, spatial_dims=dims, in_channels=cin, out_channels=cout, img_size=patch, mixer=mixer)
            total, trainable = count_parameters(model)
            rows.append(dict(dataset=dataset, model=name, mixer=mixer, patch="x".join(map(str, patch)), params=total, trainable=trainable))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ablations", action="store_true", help="also the vanilla, local and global mixers")
    args = parser.parse_args(argv)
    mixers = ("vanilla", "local", "global", "log") if args.ablations else ("log",)
    print(f"{'dataset':<10} {'model':<24} {'mixer':<8} {'patch':<12} {'params':>12} {'params (M)':>10}")
    for r in summary_rows(mixers):
        print(f"{r['dataset']:<10} {r['model']:<24} {r['mixer']:<8} {r['patch']:<12} {r['params']:>12,} {r['params'] / 1e6:>10.2f}")


if __name__ == "__main__":
    main()
