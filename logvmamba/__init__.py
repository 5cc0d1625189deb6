"""LoG-VMamba reproducibility suite: models, data, training, evaluation, profiling."""

from logvmamba.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
__version__ = "0.1.0"
