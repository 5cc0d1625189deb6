"""fvcore FLOP counting for the selective scan.

Convention of the VMamba repository (``selective_scan_flop_jit``), used by
the Vision-Mamba papers: one scan costs 9 * B * L * D * N, plus B * D * L
for the D skip and B * D * L for the z gate; fvcore counts one multiply-add
as one FLOP.

fvcore traces the model with ``torch.jit.trace``; every scan is one
``prim::PythonOp.<Function name>`` node whose ``inputs`` are the tensor
arguments only. Which positional arguments were tensors is read from the
node's calling convention (``cconv``: "d" tensor, "c" constant), so a
missing D or z (passed as None) is told apart from a present one.
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from typing import Any, Callable, Optional

__all__ = ["count_flops", "flop_handles", "selective_scan_flops"]


def selective_scan_flops(batch: int, length: int, dim: int, state: int,
                         with_D: bool = True, with_z: bool = False) -> int:
    """FLOPs of one scan in the VMamba convention."""
    flops = 9 * batch * length * dim * state
    if with_D:
        flops += batch * dim * length
    if with_z:
        flops += batch * dim * length
    return flops


def _positional_args(inputs: list, outputs: list) -> list[Optional[Any]]:
    """The traced Function's positional arguments: tensor Values or None."""
    try:
        cconv = outputs[0].node().cconv()
    except (AttributeError, IndexError, RuntimeError):
        return list(inputs)  # no calling convention: assume all were tensors
    tensors = iter(inputs)
    return [next(tensors, None) if c == "d" else None for c in cconv]


def _sizes(value) -> list[int]:
    sizes = value.type().sizes()
    if sizes is None:
        raise ValueError(f"fvcore scan handle: no static shape for {value.debugName()}")
    return list(sizes)


def _scan_flop_jit(inputs: list, outputs: list, d_pos: int = 5, z_pos: Optional[int] = 6) -> int:
    """fvcore handle for a traced scan node.

    Args:
        inputs, outputs: the node's ``torch._C.Value`` lists, as fvcore passes them.
        d_pos: positional index of D in the Function's arguments.
        z_pos: positional index of z, None when the Function has no gate.
    """
    args = _positional_args(inputs, outputs)
    batch, dim, length = _sizes(args[0])
    state = _sizes(args[2])[-1]

    def given(pos: Optional[int]) -> bool:
        return pos is not None and pos < len(args) and args[pos] is not None

    return selective_scan_flops(batch, length, dim, state, with_D=given(d_pos), with_z=given(z_pos))


# Functions with mamba-ssm's argument order (u, delta, A, B, C, D, z, ...):
# ours and mamba-ssm's both trace as SelectiveScanFn.
_MAMBA_LAYOUT = ("SelectiveScanFn",)
# VMamba's wrappers take (u, delta, A, B, C, D, delta_bias, ...) and no gate.
_VMAMBA_LAYOUT = ("SelectiveScanCuda", "SelectiveScanMamba", "SelectiveScanOflex",
                  "SelectiveScanCore", "SelectiveScanNRow")


def flop_handles() -> dict[str, Callable]:
    """Op handles for ``FlopCountAnalysis.set_op_handle(**flop_handles())``.

    Examples::

        >>> from fvcore.nn import FlopCountAnalysis
        >>> fca = FlopCountAnalysis(model, inputs).set_op_handle(**flop_handles())  # doctest: +SKIP
    """
    handles: dict[str, Callable] = {}
    for name in _MAMBA_LAYOUT:
        handles[f"prim::PythonOp.{name}"] = partial(_scan_flop_jit, d_pos=5, z_pos=6)
    for name in _VMAMBA_LAYOUT:
        handles[f"prim::PythonOp.{name}"] = partial(_scan_flop_jit, d_pos=5, z_pos=None)
    return handles


def count_flops(model, inputs, extra_handles: Optional[dict[str, Callable]] = None) -> tuple[int, Counter]:
    """Total FLOPs of ``model(*inputs)`` with the scan handles installed.

    Args:
        model: an ``nn.Module``.
        inputs: a tensor or tuple of tensors passed to the model.
        extra_handles: more fvcore op handles (override the scan ones).

    Returns:
        (total FLOPs, Counter of op names fvcore could not count).
    """
    import torch
    from fvcore.nn import FlopCountAnalysis  # heavy; only when counting

    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    handles = flop_handles()
    handles.update(extra_handles or {})
    fca = FlopCountAnalysis(model, tuple(inputs)).set_op_handle(**handles)
    fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    total = int(fca.total())
    return total, Counter(fca.unsupported_ops())
