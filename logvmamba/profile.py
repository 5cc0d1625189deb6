"""Command line of the efficiency profile and of the fidelity table.

    python -m logvmamba.profile --model NAME --dataset KEY [--device cpu|cuda]
        [--size paper|synthetic|HxW|DxHxW] [--no-runtime] [--runs N] [--warmup N]
        --out FILE.json
    python -m logvmamba.profile --fidelity [--datasets ...] [--models ...]

The profile is :func:`logvmamba.profiling.report.profile_model`, the fidelity table
:mod:`logvmamba.profiling.fidelity`; this module only parses and prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional

from logvmamba.cli import add_debug_flag, command

__all__ = ["main"]

log = logging.getLogger(__name__)


def _summary(result: dict) -> str:
    lines = [f"{result['model']} on {result['dataset']} {tuple(result['input']['shape'])}, {result['device']}",
             f"  params      {result['params']['total'] / 1e6:.2f} M"]
    fl = result["flops"]
    if fl:
        lines.append(f"  FLOPs       {fl['fvcore_total'] / 1e9:.2f} G (fvcore + scan handle; scan {fl['scan'] / 1e9:.2f} G)")
        if "flop_counter" in fl:
            ratio = fl["flop_counter"]["ratio_to_2x_mac_ops"]
            lines.append(f"  FlopCounter {fl['flop_counter']['total'] / 1e9:.2f} G (2 per MAC; / (2 x fvcore MACs) = "
                         f"{'-' if ratio is None else f'{ratio:.4f}'})")
        lines.append(f"  uncounted   {fl['uncounted']['flops_estimate'] / 1e9:.2f} G estimated "
                     f"({', '.join(fl['uncounted']['ops']) or 'none'})")
        if fl["unjustified"]:
            lines.append(f"  UNJUSTIFIED {fl['unjustified']}")
    for mode, r in (result["runtime"] or {}).items():
        lines.append(f"  {mode:<11} {1e3 * r['latency_s']['median']:.1f} ms median of {r['runs']}, "
                     f"peak +{r['memory']['peak_increase_bytes'] / 2**20:.1f} MiB")
    return "\n".join(lines)


@command
def main(argv: Optional[list[str]] = None) -> int:
    """Prints the profile's summary; returns the exit status (3 when unjustified ops were found)."""
    from logvmamba.io import atomic_write_text

    parser = argparse.ArgumentParser(prog="python -m logvmamba.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fidelity", action="store_true",
                        help="print params/GFLOPs against the published table instead (see python -m "
                             "logvmamba.profiling.fidelity --help for its options; the rest go to it)")
    parser.add_argument("--model")
    parser.add_argument("--dataset")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="paper", help="paper, synthetic, or sizes like 64x96 / 16x64x64")
    parser.add_argument("--out", help="JSON file to write")
    parser.add_argument("--no-runtime", action="store_true", help="parameters and FLOPs only")
    parser.add_argument("--no-cross-check", action="store_true", help="skip the FlopCounterMode cross-check")
    parser.add_argument("--modes", nargs="+", default=["inference", "train"], choices=["inference", "train"])
    parser.add_argument("--runs", type=int, default=None, help="timed calls per mode (default 10 CUDA, 3 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per mode (default 3 CUDA, 1 CPU)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    parser.add_argument("--amp", action="store_true", help="autocast in the timed calls")
    parser.add_argument("--model-kwargs", default="{}", help="JSON object of extra create_model keywords")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per measurement subprocess")
    parser.add_argument("--allow-unjustified", action="store_true",
                        help="write the JSON even if fvcore skipped ops without a justification")
    add_debug_flag(parser)
    args, rest = parser.parse_known_args(argv)
    if args.fidelity:
        from logvmamba.profiling.fidelity import main as fidelity_main

        return fidelity_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    for name in ("model", "dataset", "out"):
        if getattr(args, name) is None:
            parser.error(f"--{name} is required")
    try:
        model_kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as err:
        parser.error(f"--model-kwargs is not JSON: {err}")
    if not isinstance(model_kwargs, dict):
        parser.error("--model-kwargs must be a JSON object")
    from logvmamba.profiling.report import profile_model

    result = profile_model(
        args.model, args.dataset, device=args.device, size=args.size, runtime=not args.no_runtime,
        cross_check=not args.no_cross_check, warmup=args.warmup, runs=args.runs, threads=args.threads,
        optimizer=args.optimizer, amp=args.amp, modes=args.modes, model_kwargs=model_kwargs, timeout=args.timeout,
    )
    unjustified = (result["flops"] or {}).get("unjustified")
    if unjustified and not args.allow_unjustified:
        log.error("%s\nfvcore skipped ops that JUSTIFIED_UNCOUNTED_OPS does not justify: %s; count them or add a "
                  "justification in logvmamba/profiling/flops.py (or pass --allow-unjustified); nothing written",
                  _summary(result), unjustified)
        return 3
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(_summary(result))
    return 0


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s: %(message)s")
    raise SystemExit(main())
