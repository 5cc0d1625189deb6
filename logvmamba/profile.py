"""Command line of the efficiency profile (the workflow's ``profile`` rule calls it).

    python -m logvmamba.profile --model NAME --dataset KEY [--device cpu|cuda]
        [--size paper|synthetic|HxW|DxHxW] [--no-runtime] [--runs N] --out FILE.json
    python -m logvmamba.profile --fidelity [--datasets ...] [--models ...]

See :mod:`logvmamba.profiling.report` and :mod:`logvmamba.profiling.fidelity`.
"""

from logvmamba.profiling.report import main

if __name__ == "__main__":
    raise SystemExit(main())
