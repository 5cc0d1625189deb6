"""``python -m logvmamba.evaluation <dataset> <pred_dir> <out_dir>``: score a folder of predictions."""

from logvmamba.evaluation.evaluate import main

raise SystemExit(main())
