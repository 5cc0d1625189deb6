"""LoG-VMamba reproducibility suite: models, data, training, evaluation, profiling."""

import importlib

__all__ = ["create_model", "list_models", "register_model"]
__version__ = "0.1.0"


def __getattr__(name):
    # The registry imports torch (2-3 s); data preparation, splitting and scoring need it not.
    if name in __all__:
        return getattr(importlib.import_module("logvmamba.registry"), name)
    raise AttributeError(f"module 'logvmamba' has no attribute {name!r}")
