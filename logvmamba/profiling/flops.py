"""FLOPs in the Vision-Mamba papers' convention, with what it leaves out made explicit.

The published tables count with fvcore (one multiply-add = one FLOP for convs,
Linears, matmuls and einsums; norms at 4-5 FLOPs per element; nearest and bilinear
upsampling) plus the selective-scan handle of :mod:`logvmamba.ops.flops`
(9 * B * L * D * N, plus B * D * L each for D and the z gate). Every other op is
"unsupported" in fvcore and counts nothing.

:func:`count_model_flops` reproduces that total and accounts for the rest:

- every op fvcore would skip is looked up in :data:`JUSTIFIED_UNCOUNTED_OPS`, which
  says why leaving it out is fine (elementwise activations, arithmetic and
  comparisons, pooling, reductions, softmax, upsampling without a fvcore handle, pure
  data movement) and how much work it is per element; the traced shapes
  give an estimate of that work, reported next to the total but never added to it;
- an op in neither fvcore's handles nor that list is "unjustified" and reported, so
  a new model cannot hide real work (an attention kernel, say) from the table;
- optionally the total is cross-checked with ``torch.utils.flop_counter.FlopCounterMode``,
  which counts 2 FLOPs per multiply-add for convolutions and matrix products and
  nothing else (the scan's internals are elementwise ops to it): its total should be
  twice fvcore's multiply-add ops (``mac_ops``).
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from types import MappingProxyType
from typing import Mapping, NamedTuple

import torch
import torch.nn as nn

from logvmamba.ops import flop_handles

__all__ = ["JUSTIFIED_UNCOUNTED_OPS", "MAC_OPERATORS", "UncountedOp", "count_model_flops", "RELATION"]


class UncountedOp(NamedTuple):
    """Why an op may stay out of the FLOP total, and its work per element.

    ``per_element`` FLOPs per element of the ``basis`` tensor ("out": the output,
    "in": the first input) give the size estimate; 0 for pure data movement.
    """

    category: str
    reason: str
    per_element: float = 1.0
    basis: str = "out"


_ACT = "elementwise activation: a few FLOPs per element, not counted by the fvcore convention of the published tables"
_ARITH = "elementwise arithmetic (residual adds, gates, scalings): one FLOP per element, not counted by the fvcore convention"
_MOVE = "data movement (copy, reorder, gather): no arithmetic"
_POOL = "pooling: one comparison or add per input element, not counted by the fvcore convention"
_REDUCE = "reduction: one add per input element, not counted by the fvcore convention"


def _entries(category: str, reason: str, per_element: float, basis: str, *ops: str) -> dict[str, UncountedOp]:
    return {op: UncountedOp(category, reason, per_element, basis) for op in ops}


JUSTIFIED_UNCOUNTED_OPS: Mapping[str, UncountedOp] = MappingProxyType({
    **_entries("activation", _ACT, 1, "out",
               "aten::silu", "aten::silu_", "aten::leaky_relu", "aten::leaky_relu_", "aten::gelu", "aten::gelu_",
               "aten::sigmoid", "aten::sigmoid_", "aten::tanh", "aten::tanh_", "aten::elu", "aten::elu_",
               "aten::prelu", "aten::hardswish", "aten::hardswish_", "aten::softplus", "aten::relu6"),
    **_entries("arithmetic", _ARITH, 1, "out",
               "aten::add", "aten::add_", "aten::sub", "aten::sub_", "aten::rsub", "aten::mul", "aten::mul_",
               "aten::div", "aten::div_", "aten::neg", "aten::exp", "aten::log", "aten::pow", "aten::sqrt",
               "aten::rsqrt", "aten::reciprocal", "aten::abs", "aten::clamp_min", "aten::clamp_max",
               "aten::addcmul", "aten::lerp", "aten::where"),
    **_entries("softmax", "softmax over attention scores or logits: about 3 FLOPs per element (exp, sum, divide), "
               "not counted by the fvcore convention", 3, "out", "aten::softmax", "aten::log_softmax",
               "aten::_softmax"),
    **_entries("pooling", _POOL, 1, "in",
               "aten::max_pool1d", "aten::max_pool2d", "aten::max_pool3d", "aten::avg_pool1d", "aten::avg_pool2d",
               "aten::avg_pool3d", "aten::adaptive_avg_pool1d", "aten::adaptive_avg_pool3d",
               "aten::adaptive_max_pool2d", "aten::adaptive_max_pool3d"),
    **_entries("reduction", _REDUCE, 1, "in", "aten::sum", "aten::mean", "aten::amax", "aten::var", "aten::std",
               "aten::linalg_vector_norm", "aten::norm"),
    **_entries("interpolation", "upsampling without a fvcore handle (nearest: a copy; linear/trilinear: a few "
               "FLOPs per output element; fvcore counts bilinear 2D at 4 and nearest 2D at 1 per element)", 1, "out",
               "aten::upsample_nearest1d", "aten::upsample_nearest3d", "aten::upsample_linear1d",
               "aten::upsample_trilinear3d", "aten::upsample_bicubic2d"),
    **_entries("comparison", "elementwise comparison or logic (attention-mask construction): one operation per "
               "element, not counted by the fvcore convention", 1, "out",
               "aten::ne", "aten::lt", "aten::le", "aten::logical_and", "aten::logical_or", "aten::logical_not",
               "aten::isnan", "aten::isinf"),
    **_entries("data movement", _MOVE, 0, "out",
               "aten::flip", "aten::pixel_shuffle", "aten::pixel_unshuffle", "aten::pad", "aten::reflection_pad2d",
               "aten::reflection_pad3d", "aten::replication_pad2d", "aten::replication_pad3d", "aten::index_select",
               "aten::repeat", "aten::repeat_interleave", "aten::unfold", "aten::im2col", "aten::col2im",
               "aten::tile", "aten::expand_as", "aten::masked_fill_", "aten::scatter", "aten::scatter_",
               "aten::tril", "aten::triu", "aten::clone", "aten::view_as", "aten::movedim", "aten::moveaxis",
               "aten::new_ones", "aten::zeros_like", "aten::ones_like", "aten::empty_like", "aten::fill_",
               "aten::zero_", "aten::type_as", "aten::alias", "aten::lift_fresh", "aten::channel_shuffle",
               "aten::dropout_", "aten::feature_dropout", "aten::detach_", "aten::linspace", "aten::meshgrid",
               "aten::resolve_conj", "aten::resolve_neg"),
})
"""fvcore-unsupported ops that may stay out of the total, with the reason and a size estimate."""

# fvcore's by-operator names of the ops it counts as multiply-adds.
MAC_OPERATORS = frozenset({"conv", "linear", "matmul", "mm", "bmm", "addmm", "einsum"})

_UNCOUNTED_KEY = "uncounted:"

RELATION = (
    "fvcore_total follows the published tables: fvcore counts one FLOP per multiply-add of convolutions, "
    "Linears, matmuls and einsums (mac_ops), 4-5 FLOPs per element of norms, nearest/bilinear 2D upsampling, "
    "and the selective scan by 9*B*L*D*N (+B*D*L for D, +B*D*L for the z gate) through logvmamba.ops.flop_handles "
    "(scan). torch.utils.flop_counter.FlopCounterMode counts 2 FLOPs per multiply-add of the same convolutions "
    "and matrix products and nothing else: norms, upsampling and the scan (whose internals are elementwise aten "
    "ops, or one opaque kernel) count zero. So flop_counter.total should equal 2 * mac_ops "
    "(flop_counter.ratio_to_2x_mac_ops = 1), and fvcore_total = mac_ops + scan + other counted ops."
)


def _shape(value) -> list[int] | None:
    try:
        sizes = value.type().sizes()
    except RuntimeError:  # not a tensor
        return None
    return None if sizes is None else list(sizes)


def _uncounted_handle(inputs: list, outputs: list, op: str, entry: UncountedOp) -> Counter:
    """fvcore handle that records an op's element count under its own key (removed from the total later)."""
    shape = _shape((inputs if entry.basis == "in" else outputs)[0]) if (inputs and outputs) else None
    elements = 0 if shape is None else int(torch.Size(shape).numel())
    return Counter({_UNCOUNTED_KEY + op: entry.per_element * elements})


def _flop_counter(model: nn.Module, inputs: tuple) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(*inputs)
    by_op = counter.get_flop_counts().get("Global", {})
    return {"total": int(counter.get_total_flops()), "by_operator": {str(k): int(v) for k, v in by_op.items()}}


@torch.no_grad()
def count_model_flops(model: nn.Module, inputs, cross_check: bool = True) -> dict:
    """FLOPs of ``model(*inputs)`` in the published convention, with a breakdown.

    The model is traced once by fvcore (and, with ``cross_check``, run once more
    under ``FlopCounterMode``); call it in eval mode with the batch you mean.

    Returns:
        dict with ``fvcore_total`` (the published convention), ``by_operator``,
        ``scan`` (selective-scan FLOPs), ``mac_ops`` (multiply-adds of convs and
        matrix products), ``uncounted`` (per justified op: category, reason,
        estimated FLOPs; their sum), ``unjustified`` (op -> number of calls of
        fvcore-unsupported ops without a justification), ``flop_counter`` (total,
        by operator, ratio to 2 * mac_ops) when cross-checked, and ``relation``.

    Examples::

        >>> out = count_model_flops(nn.Conv2d(3, 8, 3, padding=1).eval(), torch.randn(1, 3, 8, 8))
        >>> out["fvcore_total"] == 8 * 3 * 9 * 64
        True
    """
    from fvcore.nn import FlopCountAnalysis  # heavy; only when counting

    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    inputs = tuple(inputs)
    handles = flop_handles()
    for op, entry in JUSTIFIED_UNCOUNTED_OPS.items():
        handles.setdefault(op, partial(_uncounted_handle, op=op, entry=entry))
    analysis = FlopCountAnalysis(model, inputs).set_op_handle(**handles)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    by_operator = {k: int(v) for k, v in analysis.by_operator().items()}
    uncounted = {}
    for key in [k for k in by_operator if k.startswith(_UNCOUNTED_KEY)]:
        op = key[len(_UNCOUNTED_KEY):]
        entry = JUSTIFIED_UNCOUNTED_OPS[op]
        uncounted[op] = {"category": entry.category, "reason": entry.reason, "flops_estimate": by_operator.pop(key)}
    total = sum(by_operator.values())
    scan = sum(v for k, v in by_operator.items() if k.startswith("PythonOp."))
    mac_ops = sum(v for k, v in by_operator.items() if k in MAC_OPERATORS)
    result = {
        "fvcore_total": total,
        "gflops": total / 1e9,
        "by_operator": dict(sorted(by_operator.items())),
        "scan": scan,
        "mac_ops": mac_ops,
        "uncounted": {
            "ops": dict(sorted(uncounted.items())),
            "flops_estimate": sum(u["flops_estimate"] for u in uncounted.values()),
        },
        "unjustified": dict(sorted(Counter(analysis.unsupported_ops()).items())),
        "relation": RELATION,
    }
    if cross_check:
        fc = _flop_counter(model, inputs)
        fc["ratio_to_2x_mac_ops"] = fc["total"] / (2 * mac_ops) if mac_ops else None
        result["flop_counter"] = fc
    return result
