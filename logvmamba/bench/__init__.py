"""Micro-benchmarks; run each as ``python -m logvmamba.bench.<name>``."""
