"""One registry for LoG-VMamba and every baseline.

A model is a function ``fn(*, spatial_dims, in_channels, out_channels, img_size, **kwargs)``
decorated with :func:`register_model`; its name is the function name. A model that
builds for only some spatial dims says so, ``@register_model(spatial_dims=(2,))``
(the default is 2 and 3); :func:`model_dims` reads it back, and the tests build
every ``*_test`` model for each of its dims. The model files are imported on first
use of :func:`create_model`, :func:`list_models` or :func:`model_dims`, not at
package import: the built-in ones below, every module of the ``baselines``
package, and any module named in the ``LOGVMAMBA_MODEL_MODULES`` environment
variable (comma separated), which is how a user adds a model from outside.
:func:`create_model` and :func:`model_dims` import only the module that defines the
name (found by reading the modules' sources for ``@register_model`` functions), so a
job that builds one network does not pay for the others' imports (MONAI's networks);
:func:`list_models` imports them all.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import importlib
import importlib.util
import os
import pkgutil
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch.nn as nn

__all__ = ["register_model", "create_model", "list_models", "model_dims", "UnknownModelError", "validate_img_size"]

BUILTIN_MODULES = ("logvmamba.models.swin_umamba_d", "logvmamba.models.umamba_enc", "logvmamba.models.logvmamba")

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_DIMS: dict[str, tuple[int, ...]] = {}
_loaded_modules: set[str] = set()


class UnknownModelError(KeyError):
    """Raised for a model name that no module registered."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


def register_model(fn: Optional[Callable[..., nn.Module]] = None, *, spatial_dims: Sequence[int] = (2, 3)):
    """Register ``fn`` under its function name; a second use of a name raises.

    Used bare (``@register_model``) or with the spatial dims the model builds for
    (``@register_model(spatial_dims=(2,))``).
    """
    dims = tuple(int(d) for d in spatial_dims)
    if not dims or any(d not in (2, 3) for d in dims):
        raise ValueError(f"spatial_dims {spatial_dims!r} must be a non-empty subset of (2, 3)")

    def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _MODELS and _MODELS[name] is not fn:
            raise ValueError(f"model {name!r} is registered twice ({_MODELS[name].__module__} and {fn.__module__})")
        _MODELS[name] = fn
        _DIMS[name] = dims
        return fn

    return register if fn is None else register(fn)


def _model_modules() -> list[str]:
    modules = list(BUILTIN_MODULES)
    try:
        import baselines
    except ImportError:  # an installed wheel without the baselines package
        baselines = None
    if baselines is not None:
        modules += sorted(f"baselines.{m.name}" for m in pkgutil.iter_modules(baselines.__path__) if not m.name.startswith("_"))
    extra = os.environ.get("LOGVMAMBA_MODEL_MODULES", "")
    modules += [m.strip() for m in extra.split(",") if m.strip()]
    return modules


def _load(module: str) -> None:
    if module not in _loaded_modules:
        importlib.import_module(module)
        _loaded_modules.add(module)


def _load_all() -> None:
    for module in _model_modules():
        _load(module)


def _is_registration(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Name) and target.id == "register_model") or (
        isinstance(target, ast.Attribute) and target.attr == "register_model")


@functools.lru_cache(maxsize=None)
def _registered_in(module: str) -> frozenset[str] | None:
    """Names ``module`` registers with ``@register_model`` on its top-level functions, read from
    its source without importing it; None when the source cannot be read or parsed."""
    try:
        spec = importlib.util.find_spec(module)
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    except (ImportError, AttributeError, TypeError, ValueError, OSError, SyntaxError):
        return None
    return frozenset(node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                     and any(_is_registration(d) for d in node.decorator_list))


def _load_for(name: str) -> None:
    """Import the module that registers ``name`` (every module when none says it does)."""
    if name in _MODELS:
        return
    for module in _model_modules():
        names = _registered_in(module)
        if names is None or name in names:  # an unreadable source is imported to find out
            _load(module)
            if name in _MODELS:
                return
    _load_all()


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by a shell-style ``pattern``."""
    _load_all()
    names = sorted(_MODELS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def model_dims(name: str) -> tuple[int, ...]:
    """The spatial dims a registered model builds for.

    Raises:
        UnknownModelError: for a name no module registered.
    """
    _load_for(name)
    if name not in _DIMS:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(sorted(_MODELS))}")
    return _DIMS[name]


def create_model(
    name: str,
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    img_size: Sequence[int],
    **kwargs,
) -> nn.Module:
    """Build a registered model that maps (B, in_channels, *img_size) to logits.

    Examples::

        >>> net2d = create_model("logvmamba", spatial_dims=2, in_channels=3,
        ...                      out_channels=8, img_size=(384, 640))
        >>> net3d = create_model("logvmamba", spatial_dims=3, in_channels=4,
        ...                      out_channels=3, img_size=(128, 128, 128))
    """
    _load_for(name)
    if name not in _MODELS:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(sorted(_MODELS))}")
    return _MODELS[name](
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, img_size=tuple(img_size), **kwargs
    )


def validate_img_size(img_size: Sequence[int], spatial_dims: int, divisor: int, model: str) -> tuple[int, ...]:
    """Check that ``img_size`` has ``spatial_dims`` entries, each a positive multiple of ``divisor``."""
    size = tuple(int(s) for s in img_size)
    if len(size) != spatial_dims or any(s <= 0 or s % divisor for s in size):
        raise ValueError(
            f"{model}: img_size {tuple(img_size)} is not supported; it needs {spatial_dims} sizes, "
            f"each a positive multiple of {divisor}"
        )
    return size
