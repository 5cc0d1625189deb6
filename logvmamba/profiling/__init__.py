"""Efficiency profiling: parameters, FLOPs (published convention), latency and peak memory.

- :func:`count_model_flops`: fvcore + selective-scan handle, the ops it skips with
  their justification (:data:`JUSTIFIED_UNCOUNTED_OPS`), a FlopCounterMode cross-check;
- :func:`profile_model`: one model x dataset x device as a JSON-ready dict
  (``python -m logvmamba.profile``);
- :func:`fidelity_rows`: our figures next to the published table
  (``python -m logvmamba.profiling.fidelity`` or ``python -m logvmamba.profile --fidelity``).

Nothing here is imported by ``import logvmamba``.
"""

from logvmamba.profiling.fidelity import fidelity_rows, format_table, load_published
from logvmamba.profiling.flops import JUSTIFIED_UNCOUNTED_OPS, count_model_flops
from logvmamba.profiling.report import SCHEMA, input_spec, profile_model, provenance

__all__ = [
    "JUSTIFIED_UNCOUNTED_OPS",
    "SCHEMA",
    "count_model_flops",
    "fidelity_rows",
    "format_table",
    "input_spec",
    "load_published",
    "profile_model",
    "provenance",
]
