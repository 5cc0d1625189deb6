"""Plans for the ``2d`` and ``3d_fullres`` configurations, by nnU-Net v2's default experiment planner.

Paper: Isensee et al., "nnU-Net: a self-configuring method for deep learning-based
biomedical image segmentation", Nature Methods 2021, https://doi.org/10.1038/s41592-020-01008-z;
the rules are those of nnU-Net v2's ``ExperimentPlanner``, github.com/MIC-DKFZ/nnUNet,
``nnunetv2/experiment_planning/experiment_planners``, and of its ResEnc presets
``nnUNetPlannerResEncM`` / ``nnUNetPlannerResEncL`` (Isensee et al., "nnU-Net Revisited",
MICCAI 2024, https://arxiv.org/abs/2404.09556), chosen by :func:`plan`'s ``planner``
(:data:`PLANNERS`).

:func:`plan` takes a fingerprint (:func:`logvmamba.data.fingerprint.dataset_fingerprint`)
and re-implements:

- **target spacing**: the median spacing per axis; when the coarsest axis is more than 3x
  coarser than the others *and* has fewer than a third of their (median, cropped)
  voxels, that axis takes the 10th percentile of its spacings instead (never finer than
  the other axes: then their largest spacing + 1e-5);
- **transpose**: the coarsest target axis first, the others in order; every
  configuration is written in that order (``transpose_forward``);
- **median shape**: the median over cases of the cropped shape resampled to the target
  spacing (``round(old spacing / new spacing * size)``); 3d_fullres is planned only when
  its first (transposed) axis is not 1, the 2d configuration on the last two axes;
- **initial patch**: ``1 / spacing`` scaled to the volume of ``256^3`` (3D) or ``2048^2``
  (2D), rounded, clipped to the median shape;
- **topology**: nnU-Net's ``get_pool_and_conv_props`` (``min_feature_map_size`` 4),
  taken from the ``nnunet`` baseline (:func:`baselines.nnunet.get_pool_and_conv_props`);
  the patch padded up to a multiple of the total stride; ``min(32 * 2^i, 512 / 320)``
  features, two convolutions per stage;
- **patch shrinking**: the network's approximate memory, the number of feature-map
  elements of its convolutions (:func:`feature_map_size`, dynamic-network-architectures'
  ``compute_conv_feature_map_size`` of a ``PlainConvUNet`` without deep supervision), must
  satisfy ``estimate / ref_bs * 2 <= reference`` with ``reference`` = 85e6 (2D) or 560e6
  (3D) times ``gpu_memory_target_gb / 8`` and ``ref_bs`` = 12 (2D) or 2 (3D); while it
  does not, the axis largest relative to the median shape loses one step of its
  (re-computed) total stride and the topology is planned again;
- **batch size**: ``round(reference / estimate * ref_bs)``, capped so that one batch covers
  at most 5% of the dataset's voxels (``median voxels * numTraining``), at least 2;
- **ResEnc presets** (``nnUNetPlannerResEncM``, ``nnUNetPlannerResEncL``): the same rules for
  a ``ResidualEncoderUNet`` (:func:`baselines.nnunet.stage_layout`: 1, 3, 4, 6, 6, ... residual
  blocks per encoder stage, one conv per decoder stage), whose estimate adds the stem conv and
  each block's two convs and its pooled / projected skip; references 135e6 (2D) / 680e6 (3D)
  for 8 GB (M, default target 8 GB) and 380e6 / 2.1e9 for 24 GB (L, default 24 GB), scaled by
  ``target / reference GB``; the patch shrinks while ``estimate > reference`` (no rescaling
  to a batch of 2); the batch covers at most 100% of the dataset's voxels;
- **normalisation** per channel name as nnU-Net maps it (``CT`` -> CTNormalization,
  ``noNorm``, ``zscore``, ``rescale_to_0_1``, ``rgb_to_0_1``, anything else
  ZScoreNormalization), the non-zero mask used for z-scoring when cropping removed
  more than a quarter of the median image.

Fields and what nnU-Net writes in ``nnUNetPlans.json`` (``plans['configurations'][c]``):
``spacing``, ``patch_size``, ``batch_size``, ``normalization_schemes``,
``use_mask_for_norm`` under the same names; ``median_shape`` is
``median_image_size_in_voxels``; ``network_class_name`` is ``architecture.network_class_name``;
``pool_op_kernel_sizes``, ``conv_kernel_sizes``, ``n_stages``, ``features_per_stage``,
``n_conv_per_stage`` (plain U-Net) or ``n_blocks_per_stage`` (ResEnc), ``n_conv_per_stage_decoder``
are ``architecture.arch_kwargs.strides``, ``.kernel_sizes``, ``.n_stages``,
``.features_per_stage``, ``.n_conv_per_stage`` / ``.n_blocks_per_stage``,
``.n_conv_per_stage_decoder``. All are in
nnU-Net's transposed axis order (see :mod:`logvmamba.data.fingerprint` for how it maps to
our arrays); ``array_axes[k]`` of a configuration is our array axis of its entry ``k``, and
:func:`in_array_axes` reorders a configuration for our loaders. :func:`from_nnunet_plans`
reads an ``nnUNetPlans.json`` into this layout. Not planned: ``3d_lowres`` / cascade, and
therefore ``batch_dice`` (which depends on whether a ``3d_lowres`` exists).

Command line::

    python -m logvmamba.planning DATASET_DIR [--root ROOT] [--planner nnUNetPlannerResEncM]
        [--gpu-memory-gb 8] [--no-cache]

prints the plans as JSON (the fingerprint is cached in ``DATASET_DIR/fingerprint.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from baselines.nnunet import UNetPlan, get_pool_and_conv_props, stage_layout
from logvmamba.data.errors import DatasetError
from logvmamba.data.fingerprint import normalization_schemes

__all__ = [
    "ANISOTROPY_THRESHOLD",
    "REFERENCE_FEATURE_MAP_SIZE",
    "REFERENCE_BATCH_SIZE",
    "REFERENCE_GPU_MEMORY_GB",
    "MIN_BATCH_SIZE",
    "MAX_DATASET_COVERED",
    "CONFIGURATIONS",
    "DEFAULT_PLANNER",
    "PLANNERS",
    "Planner",
    "target_spacing",
    "transpose_axes",
    "resampled_shape",
    "normalization_schemes",
    "unet_topology",
    "feature_map_size",
    "plan_configuration",
    "plan",
    "from_nnunet_plans",
    "in_array_axes",
    "main",
]

ANISOTROPY_THRESHOLD = 3
#: feature-map elements that fit the reference GPU (nnU-Net's UNet_reference_val_2d / _3d)
REFERENCE_FEATURE_MAP_SIZE = {2: 85_000_000, 3: 560_000_000}
#: the batch size those references were set for (UNet_reference_val_corresp_bs_2d / _3d)
REFERENCE_BATCH_SIZE = {2: 12, 3: 2}
REFERENCE_GPU_MEMORY_GB = 8
MIN_BATCH_SIZE = 2
MAX_DATASET_COVERED = 0.05
MIN_FEATURE_MAP_SIZE = 4
INITIAL_PATCH_EDGE = {2: 2048, 3: 256}
CONFIGURATIONS = ("2d", "3d_fullres")
_NETWORKS = "dynamic_network_architectures.architectures.unet."


@dataclass(frozen=True)
class Planner:
    """What distinguishes one of nnU-Net v2's experiment planners (nnunetv2 2.8.1 attribute names in brackets).

    Attributes:
        name: the planner's class name (``experiment_planner_used`` of its plans).
        plans_name: its plans identifier (``nnUNetPlans``, ``nnUNetResEncUNetMPlans``, ...).
        residual_encoder: plans a ``ResidualEncoderUNet`` instead of a ``PlainConvUNet`` (``UNet_class``).
        reference_feature_map_size: per spatial dims, the estimate that fits ``reference_gpu_memory_gb``
            (``UNet_reference_val_2d`` / ``_3d``).
        reference_gpu_memory_gb: the GPU memory those references are for (``UNet_reference_val_corresp_GB``).
        gpu_memory_target_gb: the default target (``gpu_memory_target_in_gb``).
        max_dataset_covered: the largest fraction of the dataset's voxels in one batch.
        estimate_at_min_batch: shrink the patch while the estimate rescaled from the reference batch
            to a batch of 2 is over the reference (the default planner), else while the estimate is.
    """

    name: str
    plans_name: str
    residual_encoder: bool
    reference_feature_map_size: Mapping[int, float]
    reference_gpu_memory_gb: float
    gpu_memory_target_gb: float
    max_dataset_covered: float
    estimate_at_min_batch: bool

    @property
    def network_class_name(self) -> str:
        """The network nnU-Net builds from these plans, as its plans name it."""
        return _NETWORKS + ("ResidualEncoderUNet" if self.residual_encoder else "PlainConvUNet")


#: nnU-Net v2's planners by class name: the default and the ResEnc M / L presets
PLANNERS = {p.name: p for p in (
    Planner("ExperimentPlanner", "nnUNetPlans", False, REFERENCE_FEATURE_MAP_SIZE, REFERENCE_GPU_MEMORY_GB,
            REFERENCE_GPU_MEMORY_GB, MAX_DATASET_COVERED, True),
    Planner("nnUNetPlannerResEncM", "nnUNetResEncUNetMPlans", True, {2: 135_000_000, 3: 680_000_000}, 8, 8, 1.0,
            False),
    Planner("nnUNetPlannerResEncL", "nnUNetResEncUNetLPlans", True, {2: 380_000_000, 3: 2_100_000_000}, 24, 24, 1.0,
            False),
)}
DEFAULT_PLANNER = "ExperimentPlanner"


def _planner(name: str) -> Planner:
    if name not in PLANNERS:
        raise ValueError(f"planner {name!r} is not one of {', '.join(PLANNERS)}")
    return PLANNERS[name]


# ----------------------------------------------------------------------------
# spacing, axes, shapes
# ----------------------------------------------------------------------------

def target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]]) -> np.ndarray:
    """The 3d_fullres target spacing: the median, or the anisotropy rule for the coarsest axis.

    Args:
        spacings: per case, in nnU-Net's axis order.
        shapes: per case, the shape after cropping to non-zero, same order.

    Examples::

        >>> target_spacing([[10, 1.5, 1.5], [5, 1.5, 1.5], [10, 1.5, 1.5]], [[10, 200, 200]] * 3).tolist()
        [6.0, 1.5, 1.5]
    """
    spacings = np.asarray(spacings, dtype=np.float64)
    sizes = np.asarray(shapes, dtype=np.float64)
    target = np.percentile(spacings, 50, axis=0)
    target_size = np.percentile(sizes, 50, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    if not others:
        return target
    other_spacing = max(target[i] for i in others)
    aniso_spacing = target[worst] > ANISOTROPY_THRESHOLD * other_spacing
    aniso_voxels = target_size[worst] * ANISOTROPY_THRESHOLD < min(target_size[i] for i in others)
    if aniso_spacing and aniso_voxels:
        low_res = float(np.percentile(spacings[:, worst], 10))
        if low_res < other_spacing:
            low_res = max(other_spacing, low_res) + 1e-5
        target[worst] = low_res
    return target


def transpose_axes(spacing: Sequence[float]) -> tuple[list[int], list[int]]:
    """``(transpose_forward, transpose_backward)``: the coarsest axis first, the rest in order."""
    worst = int(np.argmax(spacing))
    forward = [worst] + [i for i in range(len(spacing)) if i != worst]
    backward = [forward.index(i) for i in range(len(spacing))]
    return forward, backward


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> list[int]:
    """nnU-Net's ``compute_new_shape``: ``round(old spacing / new spacing * size)`` per axis."""
    return [int(round(s / n * k)) for s, n, k in zip(spacing, new_spacing, shape)]


# ----------------------------------------------------------------------------
# topology and memory
# ----------------------------------------------------------------------------

def _pad_up(patch: Sequence[float], divisor: Sequence[int]) -> tuple[int, ...]:
    """nnU-Net's ``pad_shape``: up to the next multiple; a fractional side (a median of two
    cases, ``40.5``) goes to the multiple above it (48 for a divisor of 8), not to its floor."""
    out = []
    for s, d in zip(patch, divisor):
        s = float(s)
        out.append(int(s) if s % d == 0 else int(s + d - s % d))
    return tuple(out)


def unet_topology(spacing: Sequence[float], patch: Sequence[float], residual_encoder: bool = False) -> UNetPlan:
    """The U-Net nnU-Net's planner builds for a (possibly fractional) patch.

    Pooling and kernels come from :func:`baselines.nnunet.get_pool_and_conv_props`, widths and
    convs (or, with ``residual_encoder``, the ResEnc presets' blocks) from
    :func:`baselines.nnunet.stage_layout`; the patch is padded up to a multiple of the total
    stride as the planner pads it.
    """
    _, strides, kernels, _, divisor = get_pool_and_conv_props(spacing, patch, MIN_FEATURE_MAP_SIZE)
    return UNetPlan(
        patch_size=_pad_up(patch, divisor),
        spacing=tuple(float(s) for s in spacing),
        kernel_sizes=kernels,
        strides=strides,
        **stage_layout(len(strides), len(spacing), residual_encoder=residual_encoder),
    )


def feature_map_size(topology: UNetPlan, num_classes: int, deep_supervision: bool = False) -> int:
    """Elements of every convolution's output map for one sample: nnU-Net's memory estimate.

    Encoder stage ``s`` adds ``n_conv * features[s] * prod(size_s)`` (``size_s`` the patch
    floor-divided by the strides so far); decoder stage at resolution ``s`` adds its
    convolutions and its transposed convolution, ``(n_conv + 1) * features[s] * prod(size_s)``,
    and a segmentation head ``num_classes * prod(size_s)`` (the full-resolution one only,
    unless ``deep_supervision``). Input channels do not enter.

    A residual encoder (``topology.n_blocks_per_stage``, dynamic-network-architectures'
    ``ResidualEncoderUNet``) adds its stem conv, ``features[0] * prod(patch)``, and per stage
    ``2 * n_blocks * features[s] * prod(size_s)`` plus ``features[s] * prod(size_s)`` for the
    skip of a first block that changes the resolution or the width.
    """
    patch = [int(s) for s in topology.patch_size]
    sizes, size = [], list(patch)
    for stride in topology.strides:
        size = [a // b for a, b in zip(size, stride)]
        sizes.append(int(np.prod(size, dtype=np.int64)))
    if topology.n_blocks_per_stage:
        total = topology.features[0] * int(np.prod(patch, dtype=np.int64))
        widths = (topology.features[0],) + tuple(topology.features)
        for s, (n, f, v) in enumerate(zip(topology.n_blocks_per_stage, topology.features, sizes)):
            skip = any(st != 1 for st in topology.strides[s]) or widths[s] != f
            total += (2 * n + skip) * f * v
    else:
        total = sum(n * f * v for n, f, v in zip(topology.n_conv_per_stage, topology.features, sizes))
    for s, n in enumerate(topology.n_conv_per_stage_decoder):
        total += (n + 1) * topology.features[s] * sizes[s]
        if deep_supervision or s == 0:
            total += num_classes * sizes[s]
    return int(total)


# ----------------------------------------------------------------------------
# one configuration
# ----------------------------------------------------------------------------

def plan_configuration(spacing: Sequence[float], median_shape: Sequence[float], num_voxels_dataset: float,
                       num_classes: int, gpu_memory_target_gb: float | None = None,
                       planner: str = DEFAULT_PLANNER) -> dict:
    """Patch, topology and batch size of one configuration (nnU-Net's ``get_plans_for_configuration``).

    Args:
        spacing: target spacing, 2 or 3 axes (transposed order).
        median_shape: median resampled shape, same axes.
        num_voxels_dataset: ``prod(median 3D shape) * numTraining`` (for the batch cap).
        num_classes: ``len(dataset.json labels)`` (background and regions each count one).
        gpu_memory_target_gb: nnU-Net's ``gpu_memory_target_in_gb``; default the planner's (8, or 24 for L).
        planner: a key of :data:`PLANNERS`.

    Returns:
        ``spacing``, ``patch_size``, ``batch_size``, ``median_shape``, ``network_class_name``,
        ``pool_op_kernel_sizes``, ``conv_kernel_sizes``, ``n_stages``, ``features_per_stage``,
        ``n_conv_per_stage`` (plain U-Net) or ``n_blocks_per_stage`` (ResEnc),
        ``n_conv_per_stage_decoder``, ``feature_map_size`` (the memory estimate).

    Examples::

        >>> p = plan_configuration((1.0, 1.0), (96, 128), 10 * 96 * 128, 8)
        >>> p["patch_size"], p["batch_size"], p["n_stages"]
        ([96, 128], 2, 5)
        >>> plan_configuration((1.0, 1.0), (96, 128), 10 * 96 * 128, 8, planner="nnUNetPlannerResEncM")["batch_size"]
        10
    """
    spec = _planner(planner)
    gpu_memory_target_gb = spec.gpu_memory_target_gb if gpu_memory_target_gb is None else gpu_memory_target_gb
    spacing = [float(s) for s in spacing]
    dim = len(spacing)
    if dim not in (2, 3) or len(median_shape) != dim:
        raise ValueError(f"spacing {spacing} and median_shape {list(median_shape)} must both have 2 or 3 axes")
    if any(s <= 0 for s in spacing) or any(float(m) <= 0 for m in median_shape):
        raise ValueError(f"spacing {spacing} and median_shape {list(median_shape)} must be positive")
    median = [float(m) for m in median_shape]
    inverse = 1 / np.asarray(spacing)
    scale = (INITIAL_PATCH_EDGE[dim] ** dim / np.prod(inverse)) ** (1 / dim)
    initial = [min(round(float(i)), m) for i, m in zip(inverse * scale, median)]

    residual = spec.residual_encoder
    topology = unet_topology(spacing, initial, residual)
    estimate = feature_map_size(topology, num_classes)
    reference = spec.reference_feature_map_size[dim] * gpu_memory_target_gb / spec.reference_gpu_memory_gb
    ref_bs = REFERENCE_BATCH_SIZE[dim]
    while (estimate / ref_bs * MIN_BATCH_SIZE if spec.estimate_at_min_batch else estimate) > reference:
        patch = list(topology.patch_size)
        axis = int(np.argsort([p / m for p, m in zip(patch, median)])[-1])
        trial = list(patch)
        trial[axis] -= topology.divisor[axis]
        # one step of the stride the smaller patch would have (skips no valid size)
        patch[axis] -= unet_topology(spacing, trial).divisor[axis]
        if patch[axis] < 1:
            raise ValueError(f"no patch fits a GPU memory target of {gpu_memory_target_gb} GB "
                             f"(spacing {spacing}, median shape {median})")
        topology = unet_topology(spacing, patch, residual)
        estimate = feature_map_size(topology, num_classes)

    batch_size = round(reference / estimate * ref_bs)
    cap = round(num_voxels_dataset * spec.max_dataset_covered / np.prod(topology.patch_size, dtype=np.float64))
    batch_size = max(min(batch_size, cap), MIN_BATCH_SIZE)
    encoder = {"n_blocks_per_stage": list(topology.n_blocks_per_stage)} if residual \
        else {"n_conv_per_stage": list(topology.n_conv_per_stage)}
    return {
        "spacing": spacing,
        "patch_size": list(topology.patch_size),
        "batch_size": int(batch_size),
        "median_shape": median,
        "network_class_name": spec.network_class_name,
        "pool_op_kernel_sizes": [list(s) for s in topology.strides],
        "conv_kernel_sizes": [list(k) for k in topology.kernel_sizes],
        "n_stages": topology.n_stages,
        "features_per_stage": list(topology.features),
        **encoder,
        "n_conv_per_stage_decoder": list(topology.n_conv_per_stage_decoder),
        "feature_map_size": estimate,
    }


# ----------------------------------------------------------------------------
# the plans
# ----------------------------------------------------------------------------

_FINGERPRINT_KEYS = ("spacings", "shapes_after_crop", "channel_names", "labels", "num_training",
                     "median_relative_size_after_cropping")


def plan(fingerprint: Mapping, gpu_memory_target_gb: float | None = None, planner: str = DEFAULT_PLANNER) -> dict:
    """nnU-Net v2's plans (``2d``, and ``3d_fullres`` for 3D data) from a fingerprint.

    Args:
        fingerprint: :func:`logvmamba.data.fingerprint.dataset_fingerprint`'s dict (or one
            with at least ``spacings``, ``shapes_after_crop``, ``channel_names``, ``labels``,
            ``num_training``, ``median_relative_size_after_cropping``).
        gpu_memory_target_gb: the planner's GPU memory target; default the planner's own
            (8 GB; 24 GB for ``nnUNetPlannerResEncL``).
        planner: a key of :data:`PLANNERS`: ``ExperimentPlanner`` (nnU-Net's default),
            ``nnUNetPlannerResEncM`` or ``nnUNetPlannerResEncL``.

    Returns:
        ``{"dataset_name", "planner", "plans_name", "gpu_memory_target_gb", "transpose_forward",
        "transpose_backward", "original_median_spacing_after_transp",
        "original_median_shape_after_transp", "foreground_intensity_properties_per_channel",
        "configurations": {"2d": {...}, "3d_fullres": {...}}}``; each configuration as
        :func:`plan_configuration` returns it plus ``normalization_schemes``,
        ``use_mask_for_norm`` and ``array_axes``.

    Raises:
        ValueError: a key missing, spacings / shapes that are not one positive 3-vector per case,
            or an unknown planner.
    """
    spec = _planner(planner)
    gpu_memory_target_gb = spec.gpu_memory_target_gb if gpu_memory_target_gb is None else gpu_memory_target_gb
    missing = [k for k in _FINGERPRINT_KEYS if k not in fingerprint]
    if missing:
        raise ValueError(f"fingerprint lacks {', '.join(missing)} (make it with "
                         f"logvmamba.data.fingerprint.dataset_fingerprint)")
    spacings = np.asarray(fingerprint["spacings"], dtype=np.float64)
    shapes = np.asarray(fingerprint["shapes_after_crop"], dtype=np.float64)
    if spacings.ndim != 2 or spacings.shape[1] != 3 or spacings.shape != shapes.shape or len(spacings) == 0:
        raise ValueError(f"fingerprint spacings {spacings.shape} and shapes_after_crop {shapes.shape} must be one "
                         f"3-vector per case each (nnU-Net's axis order; 2D images as (1, H, W))")
    if (spacings <= 0).any() or (shapes <= 0).any():
        raise ValueError("fingerprint spacings and shapes_after_crop must be positive")

    spacing = target_spacing(spacings, shapes)
    forward, backward = transpose_axes(spacing)
    new_shapes = [resampled_shape(k, s, spacing) for s, k in zip(spacings, shapes)]
    median = np.median(np.asarray(new_shapes, dtype=np.float64), axis=0)[forward]
    spacing_t = spacing[forward]
    num_voxels = float(np.prod(median, dtype=np.float64) * int(fingerprint["num_training"]))
    num_classes = len(fingerprint["labels"])
    channels = fingerprint["channel_names"]
    channel_names = [channels[str(i)] for i in range(len(channels))] if isinstance(channels, Mapping) \
        else list(channels)
    schemes, use_mask = normalization_schemes(channel_names, float(fingerprint["median_relative_size_after_cropping"]))
    array_axes = list(fingerprint.get("array_axes", [None, None, None]))
    axes_t = [array_axes[i] for i in forward]

    configurations = {}
    if median[0] != 1:
        configurations["3d_fullres"] = dict(
            plan_configuration(spacing_t, median, num_voxels, num_classes, gpu_memory_target_gb, planner),
            array_axes=axes_t)
    configurations["2d"] = dict(
        plan_configuration(spacing_t[1:], median[1:], num_voxels, num_classes, gpu_memory_target_gb, planner),
        array_axes=axes_t[1:])
    for config in configurations.values():
        config["normalization_schemes"] = list(schemes)
        config["use_mask_for_norm"] = list(use_mask)
    return {
        "dataset_name": fingerprint.get("name"),
        "planner": f"nnU-Net v2 {spec.name} (re-implemented by logvmamba.planning)",
        "plans_name": spec.plans_name,
        "gpu_memory_target_gb": float(gpu_memory_target_gb),
        "transpose_forward": forward,
        "transpose_backward": backward,
        "original_median_spacing_after_transp": [float(v) for v in np.median(spacings, axis=0)[forward]],
        "original_median_shape_after_transp": [int(round(v)) for v in np.median(shapes, axis=0)[forward]],
        "foreground_intensity_properties_per_channel": fingerprint.get("foreground_intensity_properties_per_channel"),
        "configurations": {name: configurations[name] for name in CONFIGURATIONS if name in configurations},
    }


def from_nnunet_plans(plans: Mapping | str | os.PathLike) -> dict:
    """An ``nnUNetPlans.json`` (path or dict) in :func:`plan`'s layout (``2d`` and ``3d_fullres`` only).

    ``array_axes`` follows from the reader nnU-Net used: ``NaturalImage2DIO`` (png) or a
    volume reader (NIfTI: our axes reversed).
    """
    if not isinstance(plans, Mapping):
        path = Path(plans)
        try:
            plans = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DatasetError(path, f"cannot read nnU-Net plans ({err})") from None
    forward = list(plans["transpose_forward"])
    array_axes = [None, 0, 1] if plans.get("image_reader_writer") == "NaturalImage2DIO" else [2, 1, 0]
    axes_t = [array_axes[i] for i in forward]
    configurations = {}
    for name in CONFIGURATIONS:
        config = plans["configurations"].get(name)
        if config is None:
            continue
        arch = config["architecture"]["arch_kwargs"]
        configurations[name] = {
            "spacing": [float(s) for s in config["spacing"]],
            "patch_size": [int(p) for p in config["patch_size"]],
            "batch_size": int(config["batch_size"]),
            "median_shape": [float(m) for m in config["median_image_size_in_voxels"]],
            "pool_op_kernel_sizes": [list(s) for s in arch["strides"]],
            "conv_kernel_sizes": [list(k) for k in arch["kernel_sizes"]],
            "network_class_name": config["architecture"].get("network_class_name"),
            "n_stages": int(arch["n_stages"]),
            "features_per_stage": list(arch["features_per_stage"]),
            **{key: list(arch[key]) for key in ("n_conv_per_stage", "n_blocks_per_stage") if key in arch},
            "n_conv_per_stage_decoder": list(arch["n_conv_per_stage_decoder"]),
            "normalization_schemes": list(config["normalization_schemes"]),
            "use_mask_for_norm": list(config["use_mask_for_norm"]),
            "array_axes": axes_t if len(config["spacing"]) == 3 else axes_t[1:],
        }
    return {
        "dataset_name": plans.get("dataset_name"),
        "planner": plans.get("experiment_planner_used"),
        "plans_name": plans.get("plans_name"),
        "transpose_forward": forward,
        "transpose_backward": list(plans["transpose_backward"]),
        "original_median_spacing_after_transp": list(plans["original_median_spacing_after_transp"]),
        "original_median_shape_after_transp": list(plans["original_median_shape_after_transp"]),
        "foreground_intensity_properties_per_channel": plans.get("foreground_intensity_properties_per_channel"),
        "configurations": configurations,
    }


def in_array_axes(configuration: Mapping) -> dict:
    """``spacing``, ``patch_size`` and ``median_shape`` of a configuration in our arrays' axis order.

    Examples::

        >>> in_array_axes({"array_axes": [2, 0, 1], "spacing": [5.0, 1.5, 1.5],
        ...                "patch_size": [16, 160, 128], "median_shape": [10.0, 200.0, 180.0]})["patch_size"]
        [160, 128, 16]
    """
    axes = list(configuration["array_axes"])
    if any(a is None for a in axes) or sorted(axes) != list(range(len(axes))):
        raise ValueError(f"array_axes {axes} do not map this configuration onto our arrays' axes")
    order = [axes.index(i) for i in range(len(axes))]
    return {key: [configuration[key][k] for k in order] for key in ("spacing", "patch_size", "median_shape")}


# ----------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    from logvmamba.data.fingerprint import dataset_fingerprint

    parser = argparse.ArgumentParser(
        prog="python -m logvmamba.planning",
        description="Plan the 2d and 3d_fullres configurations of an nnU-Net v2 raw dataset as nnU-Net v2's "
                    "planners do (default: its ExperimentPlanner); prints the plans as JSON.")
    parser.add_argument("dataset", help="dataset folder, or DatasetXXX_Name / id under --root")
    parser.add_argument("--root", default=None, help="dataset root for a name (default $nnUNet_raw)")
    parser.add_argument("--planner", default=DEFAULT_PLANNER, choices=list(PLANNERS),
                        help=f"nnU-Net's planner (default: {DEFAULT_PLANNER})")
    parser.add_argument("--gpu-memory-gb", type=float, default=None,
                        help="GPU memory target (default the planner's: 8, or 24 for nnUNetPlannerResEncL)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write DATASET/fingerprint.json")
    args = parser.parse_args(argv)
    try:
        fingerprint = dataset_fingerprint(args.dataset, root=args.root, cache=not args.no_cache)
        plans = plan(fingerprint, gpu_memory_target_gb=args.gpu_memory_gb, planner=args.planner)
    except (DatasetError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(plans, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
