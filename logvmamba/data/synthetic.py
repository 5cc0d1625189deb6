"""Synthetic stand-ins for the four datasets, in exactly their on-disk format.

Each generator writes an nnU-Net v2 raw dataset with the real dataset's
channel count, label set, label meaning and file type, at a small size, with
structure that a model has to learn (a trained model scores well, an
untrained one does not). Every case is drawn from
``numpy.random.default_rng([seed, salt, case_index])``, so the same seed gives
the same files, and asking for more cases keeps the first ones unchanged.
dataset.json carries ``"synthetic": true`` and a description saying so.

=========== ============================ ============================================
key         folder                       content
=========== ============================ ============================================
endoscopy   Dataset904_SynthEndoscopy    RGB 96x128 png; instruments (shaft + a
                                         class-specific head shape, one hue per
                                         class, a dark shadow rim, none crossing
                                         another) on textured tissue; labels 0-7
cell        Dataset903_SynthCell         RGB 96x96 png in three microscopy styles;
                                         touching cells; labels 0 background,
                                         1 interior, 2 boundary; instance masks in
                                         labels{Tr,Ts}-instance/<case>.tiff
brats       Dataset982_SynthBraTS        4 x 48^3 NIfTI (T1, T1ce, T2, FLAIR), 1 mm,
                                         skull-stripped brain-like volume (0
                                         outside) with nested oedema / core /
                                         necrosis / enhancing rim; labels in
                                         nnU-Net's BraTS convention (1 oedema,
                                         2 necrosis, 3 enhancing) with regions
acdc        Dataset927_SynthACDC         1 x ~68x68x(8-12) NIfTI, anisotropic spacing
                                         (~1.5 x 1.5 x 5-10 mm in the header);
                                         short-axis LV cavity / myocardium ring / RV
                                         crescent tapering to the apex, ED and ES
                                         frames per patient (patientNNN_frameMM)
=========== ============================ ============================================

Command line::

    python -m logvmamba.data.synthetic <endoscopy|cell|brats|acdc|all> <dest_root> [--seed N] [--cases N]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple, Sequence

import numpy as np
from scipy import ndimage

from logvmamba.cli import add_debug_flag, command
from logvmamba.data.formats import (
    save_instance_mask,
    save_nifti,
    save_png,
    staged_dataset_dir,
    write_dataset_json,
)
from logvmamba.data.labels import instance_to_semantic
from logvmamba.data.registry import DATASETS, get_info

__all__ = [
    "GENERATORS",
    "generate",
    "generate_all",
    "endoscopy_case",
    "cell_case",
    "brats_case",
    "acdc_patient",
    "main",
]

logger = logging.getLogger(__name__)


def _rng(seed: int, key: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), GENERATORS[key].salt, int(index)])


def _smooth(rng: np.random.Generator, shape: Sequence[int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / (field.std() + 1e-8)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------
# endoscopy: instruments on tissue
# ----------------------------------------------------------------------------

# per class: shaft colour, head colour, shaft half-width (px). Every class has its own hue,
# far from the tissue's red and from the other classes', on the shaft and (a shade
# brighter or darker) on the head, so a short run can learn the class from any pixel of
# the instrument; a dark shadow rim around each instrument (background) keeps the blend of
# an instrument's edge with the tissue from looking like another class's hue.
_INSTRUMENT_STYLE = {
    1: ((30, 60, 250), (80, 110, 250), 5.0),     # bipolar forceps: blue, two-prong fork
    2: ((30, 230, 240), (20, 180, 190), 5.0),    # prograsp forceps: cyan, diverging jaws
    3: ((40, 210, 50), (30, 160, 40), 5.5),      # large needle driver: green, striped block jaw
    4: ((245, 235, 30), (250, 245, 120), 6.0),   # vessel sealer: yellow, long flat jaw
    5: ((235, 40, 230), (245, 110, 240), 4.5),   # grasping retractor: magenta, ring-shaped head
    6: ((255, 150, 0), (230, 120, 0), 5.0),      # monopolar curved scissors: orange, curved blade
    7: ((245, 245, 245), (250, 250, 250), 9.0),  # ultrasound probe: wide, white, rounded cap
}
_SHADOW = 0.3  # tissue brightness under an instrument's rim
_PLACEMENT_TRIES = 20  # draws of an instrument's position before the frame goes without it


def _instrument(cls: int, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray):
    """Mask and RGB appearance of one instrument of class ``cls``."""
    h, w = yy.shape
    shaft_rgb, head_rgb, half = _INSTRUMENT_STYLE[cls]
    half = half * rng.uniform(0.9, 1.15)
    side = rng.integers(4)  # the shaft enters through one image border
    entry = [(rng.uniform(0.2, 0.8) * h, -5.0), (rng.uniform(0.2, 0.8) * h, w + 5.0),
             (-5.0, rng.uniform(0.2, 0.8) * w), (h + 5.0, rng.uniform(0.2, 0.8) * w)][side]
    tip = np.array([rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w])
    d = tip - np.asarray(entry)
    length = float(np.hypot(*d))
    d = d / length
    n = np.array([-d[1], d[0]])
    ry, rx = yy - tip[0], xx - tip[1]
    u = ry * d[0] + rx * d[1]          # along the instrument, 0 at the tip, > 0 into the head
    v = ry * n[0] + rx * n[1]          # across
    shaft = (u <= 0) & (u >= -length - 10) & (np.abs(v) <= half)
    head_len = {1: 14, 2: 15, 3: 12, 4: 18, 5: 18, 6: 16, 7: half + 1}[cls]
    if cls == 1:
        head = (u > 0) & (u <= head_len) & (np.abs(v) >= 0.2 * half) & (np.abs(v) <= 0.95 * half)
    elif cls == 2:
        head = np.zeros_like(shaft)
        for s in (-1.0, 1.0):
            a = math.radians(28.0) * s
            dirv = np.array([math.cos(a), math.sin(a)])  # in (u, v)
            off_v = v - s * 0.45 * half
            along = u * dirv[0] + off_v * dirv[1]
            across = -u * dirv[1] + off_v * dirv[0]
            head |= (along >= 0) & (along <= head_len) & (np.abs(across) <= 2.2)
    elif cls == 3:
        head = (u > 0) & (u <= head_len) & (np.abs(v) <= 0.8 * half)
    elif cls == 4:
        head = (u > 0) & (u <= head_len) & (np.abs(v) <= half)
    elif cls == 5:
        r = np.hypot(u - 10.0, v)
        head = ((r >= 4.0) & (r <= 8.0)) | ((u > 0) & (u <= 3.0) & (np.abs(v) <= 2.0))
    elif cls == 6:
        s = 1.0 if rng.random() < 0.5 else -1.0
        radius = 15.0
        cu, cv = 0.0, s * radius            # centre of curvature beside the tip
        qu, qv = u - cu, v - cv
        r = np.hypot(qu, qv)
        theta = np.arctan2(qu, -s * qv)     # 0 at the tip, growing along the blade
        head = (np.abs(r - radius) <= 2.8) & (theta >= 0) & (theta <= 1.0)
    else:  # 7: rounded cap
        head = (u > 0) & (np.hypot(u, v) <= half + 1.0)
    mask = shaft | head

    # appearance: cylindrical shading across the shaft, class-specific texture on the head
    shade = 0.8 + 0.25 * np.sqrt(np.clip(1.0 - (v / (half + 1e-6)) ** 2, 0.0, 1.0))
    rgb = np.where(head[..., None], np.asarray(head_rgb, float), np.asarray(shaft_rgb, float))
    rgb = rgb * shade[..., None]
    if cls == 3:
        rgb = rgb * np.where(head, 0.75 + 0.25 * np.sign(np.sin(u * 1.6)), 1.0)[..., None]
    if cls == 2:  # brighter band near the tip
        band = (u > -6) & (u < -3) & shaft
        rgb[band] = rgb[band] * 1.15
    return mask, rgb


def endoscopy_case(rng: np.random.Generator, shape: tuple[int, int] = (96, 128), first: int | None = None):
    """One synthetic endoscopy frame: ``(image (3, H, W) uint8, label (H, W) uint8)``.

    ``first``: the class of the first instrument (the others are drawn); the writer cycles it
    through 1-7 over the cases, so every class is in any seven consecutive frames.
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    # tissue: reddish, low-frequency texture, vessels, vignetting (no specular spots: white
    # is the ultrasound probe's colour)
    base = np.array([185.0, 75.0, 65.0]) * rng.uniform(0.85, 1.1, size=3)
    light = 1.0 + 0.14 * _smooth(rng, shape, 10) + 0.06 * _smooth(rng, shape, 2.5)
    vessels = np.abs(_smooth(rng, shape, 4)) < 0.08
    rgb = base * light[..., None]
    rgb[vessels] *= (0.7, 0.55, 0.6)
    r2 = ((yy - h / 2) / (0.75 * h)) ** 2 + ((xx - w / 2) / (0.75 * w)) ** 2
    rgb *= np.clip(1.15 - 0.55 * r2, 0.3, 1.1)[..., None]
    label = np.zeros(shape, np.uint8)
    n_tools = int(rng.choice([1, 2, 3], p=[0.3, 0.5, 0.2]))
    taken = np.zeros(shape, bool)  # instruments and their rims: a new one must not cross them
    classes = list(rng.choice(np.arange(1, 8), size=n_tools, replace=False))
    if first is not None:
        classes = [first] + [c for c in classes if c != first][: n_tools - 1]
    for cls in classes:
        for _ in range(_PLACEMENT_TRIES):
            mask, tool_rgb = _instrument(int(cls), rng, yy, xx)
            outline = ndimage.binary_dilation(mask, iterations=2)
            if not (outline & taken).any():
                break
        else:
            continue  # no free place: the frame shows fewer instruments
        rgb[outline & ~mask] *= _SHADOW
        rgb[mask] = tool_rgb[mask]
        label[mask] = cls
        taken |= outline
    rgb = ndimage.gaussian_filter(rgb, sigma=(0.6, 0.6, 0))
    rgb = rgb + rng.normal(0, 4.0, rgb.shape)
    return np.moveaxis(_to_uint8(rgb), -1, 0), label


# ----------------------------------------------------------------------------
# cell: touching instances, interior / boundary
# ----------------------------------------------------------------------------

def cell_case(rng: np.random.Generator, shape: tuple[int, int] = (96, 96)):
    """One synthetic microscopy image.

    Returns:
        ``(image (3, H, W) uint8, semantic label (H, W) uint8, instances (H, W) int32)``.
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    # cell centres gathered around a few cluster centres, so that many cells touch
    centres, radii = [], []
    clusters = rng.uniform(0.15, 0.85, size=(rng.integers(2, 5), 2)) * (h, w)
    for _ in range(400):
        if len(centres) >= rng.integers(12, 22):
            break
        c = clusters[rng.integers(len(clusters))] + rng.normal(0, 13, 2)
        r = rng.uniform(5.5, 10.0)
        if not (0 <= c[0] < h and 0 <= c[1] < w):
            continue
        if all(np.hypot(*(c - c2)) > 0.75 * (r + r2) for c2, r2 in zip(centres, radii)):
            centres.append(c)
            radii.append(r)
    dist = np.empty((len(centres), h, w))
    wobble = 0.08 * _smooth(rng, shape, 2.0)
    for i, (c, r) in enumerate(zip(centres, radii)):
        theta = rng.uniform(0, np.pi)
        elong = rng.uniform(0.75, 1.0)
        dy, dx = yy - c[0], xx - c[1]
        a = dx * np.cos(theta) + dy * np.sin(theta)
        b = -dx * np.sin(theta) + dy * np.cos(theta)
        dist[i] = np.hypot(a / r, b / (r * elong)) + wobble
    nearest = dist.argmin(axis=0)
    d_min = np.take_along_axis(dist, nearest[None], 0)[0]
    instances = np.where(d_min <= 1.0, nearest + 1, 0)
    # drop slivers, renumber 1..N
    ids, counts = np.unique(instances[instances > 0], return_counts=True)
    keep = ids[counts >= 15]
    lut = np.zeros(len(centres) + 1, dtype=np.int32)
    lut[keep] = np.arange(1, len(keep) + 1)
    instances = lut[instances]
    semantic = instance_to_semantic(instances)

    style = rng.integers(3)
    brightness = rng.uniform(0.75, 1.15, size=len(centres) + 1)[np.where(instances > 0, nearest + 1, 0)]
    profile = np.clip(1.0 - d_min, 0, 1)
    if style == 0:    # fluorescence: dark background, glowing cells with a dim rim
        colour = np.array([[60, 220, 90], [220, 70, 60], [200, 200, 210]])[rng.integers(3)]
        bg = np.full(3, rng.uniform(5, 20))
        cell = colour * (0.55 + 0.45 * profile)[..., None] * brightness[..., None]
        rim = 0.45
    elif style == 1:  # stained brightfield: pale background, purple cells, dark membranes
        bg = np.array([232.0, 215, 225])
        cell = np.array([135.0, 75, 150]) * (1.1 - 0.3 * profile)[..., None] * brightness[..., None]
        rim = 0.6
    else:             # phase-contrast-like grey
        bg = np.full(3, 135.0)
        cell = np.full(3, 80.0) * (1.0 - 0.2 * profile)[..., None] * brightness[..., None]
        rim = 1.8
    rgb = np.broadcast_to(bg, (h, w, 3)).astype(np.float64).copy()
    rgb[instances > 0] = cell[instances > 0]
    rgb[semantic == 2] *= rim
    rgb *= (1.0 + 0.1 * _smooth(rng, shape, 12))[..., None]
    rgb = ndimage.gaussian_filter(rgb, sigma=(0.7, 0.7, 0)) + rng.normal(0, 5.0, rgb.shape)
    return np.moveaxis(_to_uint8(rgb), -1, 0), semantic, instances.astype(np.int32)


# ----------------------------------------------------------------------------
# brats: brain-like volumes with nested tumour regions
# ----------------------------------------------------------------------------

# intensity of (white matter, grey matter, CSF, oedema, necrosis, enhancing) per modality
_BRATS_CONTRAST = np.array([
    [0.85, 0.60, 0.20, 0.50, 0.25, 0.55],  # T1
    [0.80, 0.60, 0.20, 0.50, 0.25, 1.00],  # T1ce
    [0.35, 0.50, 1.00, 0.80, 0.95, 0.60],  # T2
    [0.40, 0.50, 0.15, 0.95, 0.50, 0.75],  # FLAIR
])


def brats_case(rng: np.random.Generator, shape: tuple[int, int, int] = (48, 48, 48)):
    """One synthetic multi-modal brain volume.

    Returns:
        ``(image (4, X, Y, Z) int16, label (X, Y, Z) uint8)``; the label uses
        the on-disk convention of nnU-Net's BraTS converter (1 oedema,
        2 necrosis / non-enhancing core, 3 enhancing tumour).
    """
    grid = np.stack(np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]], -1).astype(np.float64)
    centre = (np.asarray(shape) - 1) / 2
    axes = np.array([0.38, 0.44, 0.36]) * np.asarray(shape) * rng.uniform(0.92, 1.05, 3)
    rel = (grid - centre) / axes
    brain = np.linalg.norm(rel, axis=-1) * (1 + 0.05 * _smooth(rng, shape, 4)) <= 1.0
    tissue = np.where(_smooth(rng, shape, 2.5) > -0.2, 0, 1)  # 0 white, 1 grey matter
    tissue[np.linalg.norm(rel, axis=-1) > 0.85] = 1           # cortex-like rim
    for s in (-1, 1):                                          # ventricles
        vrel = (grid - centre - [s * 0.18 * axes[0], 0, 0]) / (axes * [0.12, 0.35, 0.15])
        tissue[np.linalg.norm(vrel, axis=-1) <= 1.0] = 2

    # nested tumour: oedema > core > necrosis, enhancing = core minus necrosis
    t_centre = centre + rng.uniform(-0.45, 0.45, 3) * axes
    r_core = rng.uniform(3.5, 6.5)
    r_oedema = r_core + rng.uniform(3.0, 7.0)
    dist = np.linalg.norm(grid - t_centre, axis=-1)
    dist = dist / (1 + 0.22 * _smooth(rng, shape, 3))
    label = np.zeros(shape, np.uint8)
    label[dist <= r_oedema] = 1
    kind = rng.random()
    core = dist <= r_core
    if kind < 0.1:                       # no enhancing tumour (non-enhancing core only)
        label[core] = 2
    else:
        label[core] = 3
        if kind < 0.85:                  # necrotic centre inside an enhancing rim
            label[dist <= r_core - rng.uniform(1.5, 2.5)] = 2
    label[~brain] = 0
    tissue = np.where(label > 0, label + 2, tissue)  # 3 oedema, 4 necrosis, 5 enhancing

    bias = 1.0 + 0.08 * _smooth(rng, shape, 8)
    image = np.zeros((4, *shape), np.int16)
    for m in range(4):
        gain = rng.uniform(500, 1500)
        vol = _BRATS_CONTRAST[m][tissue] * bias + rng.normal(0, 0.03, shape)
        vol = ndimage.gaussian_filter(vol, 0.5) * gain
        image[m] = np.where(brain, np.clip(np.rint(vol), 1, 32000), 0).astype(np.int16)
    return image, label


# ----------------------------------------------------------------------------
# acdc: short-axis cardiac volumes, ED and ES
# ----------------------------------------------------------------------------

def _acdc_frame(rng, shape, spacing, heart, phase):
    nx, ny, nz = shape
    xx, yy = np.mgrid[0:nx, 0:ny].astype(np.float64)
    image = np.zeros(shape, np.float64)
    label = np.zeros(shape, np.uint8)
    s = spacing[0]
    cx, cy = heart["centre"]
    # chest background shared by all slices: body, lungs, liver-like block
    body = ((xx - nx / 2) / (0.62 * nx)) ** 2 + ((yy - ny / 2) / (0.55 * ny)) ** 2 <= 1
    lungs = np.zeros_like(body)
    for sx in (-1, 1):
        lungs |= ((xx - nx / 2 - sx * 0.33 * nx) / (0.16 * nx)) ** 2 + ((yy - ny * 0.4) / (0.3 * ny)) ** 2 <= 1
    factor = 1.0 if phase == "ED" else heart["es_factor"]
    r_lv = heart["r_lv"] * factor / s
    t_myo = heart["t_myo"] * (1.0 if phase == "ED" else 1.35) / s
    for z in range(nz):
        # taper from base (z = 0) to apex (z = apex); nothing beyond
        frac = z / heart["apex"]
        background = np.where(body, 0.42, 0.02) * (1 + 0.15 * heart["texture"][:, :, z])
        background[lungs & body] = 0.08
        slice_img = background
        if frac <= 1.0:
            taper = math.sqrt(max(1.0 - frac ** 2, 0.0))
            r = np.hypot(xx - cx, yy - cy)
            rl = r_lv * taper
            lv = r <= rl
            myo = (r > rl) & (r <= rl + t_myo * (0.8 + 0.2 * taper)) if frac < 0.98 else r <= t_myo
            # RV: an ellipse beside the LV with the (dilated) LV wall cut out -> a crescent
            ang = heart["rv_angle"]
            rv_taper = math.sqrt(max(1.0 - 1.25 * frac, 0.0))
            a_rv = heart["r_rv"] * factor / s * rv_taper
            offset = rl + t_myo + 0.45 * a_rv
            rx, ry = xx - cx - math.cos(ang) * offset, yy - cy - math.sin(ang) * offset
            along = rx * math.cos(ang) + ry * math.sin(ang)
            across = -rx * math.sin(ang) + ry * math.cos(ang)
            rv = (along / (0.9 * a_rv + 1e-6)) ** 2 + (across / (1.6 * a_rv + 1e-6)) ** 2 <= 1
            rv &= r > rl + t_myo + 1.0  # the RV sits outside the LV wall
            label[:, :, z][rv] = 1
            label[:, :, z][myo] = 2
            label[:, :, z][lv] = 3
            slice_img = np.where(lv | rv, 0.92, np.where(myo, 0.28, background))
        image[:, :, z] = slice_img
    image = ndimage.gaussian_filter(image * heart["bias"], sigma=(0.6, 0.6, 0))
    image = image + rng.normal(0, 0.035, shape)
    return np.clip(np.rint(image * heart["gain"]), 0, 32000).astype(np.int16), label


def acdc_patient(rng: np.random.Generator):
    """One synthetic patient: ``(spacing, [(frame_no, image (X, Y, Z) int16, label uint8), ...])``.

    Frame 1 is end-diastole (large cavity), the second frame end-systole.
    """
    nz = int(rng.integers(8, 13))
    nx, ny = (int(v) for v in rng.integers(60, 77, size=2))
    spacing = (float(rng.uniform(1.3, 1.8)),) * 2 + (float(rng.choice([5.0, 6.5, 8.0, 10.0])),)
    heart = {
        "centre": (nx / 2 + rng.uniform(-5, 5), ny / 2 + rng.uniform(-5, 5)),
        "apex": float(rng.uniform(0.65, 0.9) * nz),
        "r_lv": rng.uniform(13, 18),       # mm, ED cavity radius at the base
        "t_myo": rng.uniform(5.0, 7.5),    # mm
        "r_rv": rng.uniform(12, 17),       # mm
        "rv_angle": math.pi + rng.uniform(-0.5, 0.5),
        "es_factor": rng.uniform(0.6, 0.75),
        "texture": _smooth(rng, (nx, ny, nz), (3, 3, 0.5)),
        "bias": (1 + 0.1 * _smooth(rng, (nx, ny, nz), (12, 12, 2))),
        "gain": rng.uniform(300, 900),
    }
    es = int(rng.integers(8, 16))
    frames = []
    for frame, phase in ((1, "ED"), (es, "ES")):
        image, label = _acdc_frame(rng, (nx, ny, nz), spacing, heart, phase)
        frames.append((frame, image, label))
    return spacing, frames


# ----------------------------------------------------------------------------
# writing datasets
# ----------------------------------------------------------------------------

def _description(key: str, seed: int) -> str:
    info = get_info(key)
    return (f"SYNTHETIC stand-in for {info.title} ({info.nnunet_name}), generated by "
            f"logvmamba.data.synthetic with seed {seed}; same format, channels and labels as the real "
            f"data, but not real data: never report its scores as results on {info.nnunet_name}.")


def _write_2d(key, folder, seed, n_train, n_test, make_case):
    instances = get_info(key).instance_labels
    for subset, start, count in (("Tr", 0, n_train), ("Ts", n_train, n_test)):
        if count == 0:
            continue
        for sub in (f"images{subset}", f"labels{subset}") + ((f"labels{subset}-instance",) if instances else ()):
            (folder / sub).mkdir()
        for i in range(start, start + count):
            case = f"{key}_{i:04d}"
            out = make_case(_rng(seed, key, i), i)
            save_png(folder / f"images{subset}" / f"{case}_0000.png", out[0])
            save_png(folder / f"labels{subset}" / f"{case}.png", out[1])
            if instances:
                save_instance_mask(folder / f"labels{subset}-instance" / f"{case}.tiff", out[2])
    return n_train, n_test


def _write_endoscopy(folder, seed, n_train, n_test):
    return _write_2d("endoscopy", folder, seed, n_train, n_test, lambda rng, i: endoscopy_case(rng, first=i % 7 + 1))


def _write_cell(folder, seed, n_train, n_test):
    return _write_2d("cell", folder, seed, n_train, n_test, lambda rng, i: cell_case(rng))


def _write_brats(folder, seed, n_train, n_test):
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    for subset, start, count in (("Tr", 0, n_train), ("Ts", n_train, n_test)):
        if count == 0:
            continue
        (folder / f"images{subset}").mkdir()
        (folder / f"labels{subset}").mkdir()
        for i in range(start, start + count):
            case = f"BraTS_{i:05d}"
            image, label = brats_case(_rng(seed, "brats", i))
            for c in range(4):
                save_nifti(folder / f"images{subset}" / f"{case}_{c:04d}.nii.gz", image[c], affine)
            save_nifti(folder / f"labels{subset}" / f"{case}.nii.gz", label, affine)
    return n_train, n_test


def _write_acdc(folder, seed, n_train, n_test):
    n_train_pat, n_test_pat = (n_train + 1) // 2, (n_test + 1) // 2
    for subset, start, count in (("Tr", 0, n_train_pat), ("Ts", n_train_pat, n_test_pat)):
        if count == 0:
            continue
        (folder / f"images{subset}").mkdir()
        (folder / f"labels{subset}").mkdir()
        for p in range(start, start + count):
            spacing, frames = acdc_patient(_rng(seed, "acdc", p))
            for frame, image, label in frames:
                case = f"patient{p + 1:03d}_frame{frame:02d}"
                save_nifti(folder / f"images{subset}" / f"{case}_0000.nii.gz", image, spacing=spacing)
                save_nifti(folder / f"labels{subset}" / f"{case}.nii.gz", label, spacing=spacing)
    return 2 * n_train_pat, 2 * n_test_pat


class _Generator(NamedTuple):
    """How one dataset's stand-in is written.

    ``write(folder, seed, n_train, n_test) -> (n_train, n_test)`` as written
    (ACDC rounds to whole patients); ``cases``: default training and test
    cases; ``min_cases``: fewest training cases its split protocol works with;
    ``salt``: mixed into every case's seed; ``dataset_json``: extra dataset.json keys.
    """

    write: Callable[[Path, int, int, int], tuple[int, int]]
    cases: tuple[int, int]
    min_cases: int
    salt: int
    dataset_json: Mapping[str, str] = MappingProxyType({})


#: dataset key -> how its stand-in is written
GENERATORS = MappingProxyType({
    "endoscopy": _Generator(_write_endoscopy, (32, 8), 5, 704),
    "cell": _Generator(_write_cell, (32, 8), 5, 703),
    # no test cases: the split protocol holds BraTS' test set out of imagesTr (5 folds of the rest)
    "brats": _Generator(_write_brats, (30, 0), 7, 82, MappingProxyType({
        "label_convention": ("nnU-Net BraTS converter: BraTS 2 (oedema) -> 1, 1 (necrosis / "
                             "non-enhancing core) -> 2, 4 (enhancing) -> 3")})),
    "acdc": _Generator(_write_acdc, (32, 8), 10, 27),
})


def generate(key: str, dest_root: str | os.PathLike, seed: int = 0, num_cases: int | None = None,
             num_test: int | None = None, overwrite: bool = False, write_splits: bool = True) -> Path:
    """Write the synthetic stand-in of one dataset under ``dest_root``.

    Args:
        key: ``endoscopy``, ``cell``, ``brats`` or ``acdc``.
        dest_root: folder that receives ``DatasetXXX_Synth<Name>/``.
        seed: generation seed (same seed -> same files).
        num_cases: training cases (ACDC: volumes, rounded up to whole
            patients with 2 frames each). Default ``GENERATORS[key].cases``.
        num_test: cases written to imagesTs (BraTS: default 0, its test set
            is held out of imagesTr by the split protocol).
        overwrite: replace an existing folder.
        write_splits: also write ``splits_final.json``.

    Returns:
        The dataset folder. It is built in a temporary sibling folder and
        renamed into place at the end.
    """
    info = get_info(key)
    generator = GENERATORS[key]
    n_train, n_test_default = generator.cases
    n_train = n_train if num_cases is None else int(num_cases)
    n_test = n_test_default if num_test is None else int(num_test)
    minimum = generator.min_cases
    if n_train < minimum:
        raise ValueError(f"{key}: need at least {minimum} training cases for its 5-fold split protocol, "
                         f"got {n_train}")
    with staged_dataset_dir(dest_root, info.synthetic_name, overwrite=overwrite) as folder:
        n_train, n_test = generator.write(folder, seed, n_train, n_test)
        content = info.dataset_json(
            name=info.synthetic_name,
            numTraining=n_train,
            numTest=n_test,
            description=_description(key, seed),
            synthetic=True,
            synthetic_seed=int(seed),
            stands_in_for=info.nnunet_name,
            reference="generated by logvmamba.data.synthetic",
            licence="generated data, no restrictions",
        )
        content.update(generator.dataset_json)
        if info.instance_labels:
            content["instance_masks"] = "labelsTr-instance/<case>.tiff, labelsTs-instance/<case>.tiff"
        write_dataset_json(folder, content)
        if write_splits:
            from logvmamba.data.splits import get_splits
            get_splits(folder, protocol=info.split_protocol)
    folder = Path(dest_root) / info.synthetic_name
    logger.info("%s: %d training and %d test case(s) written to %s", key, n_train, n_test, folder)
    return folder


def generate_all(dest_root: str | os.PathLike, seed: int = 0, num_cases: int | None = None,
                 overwrite: bool = False) -> dict[str, Path]:
    """Write all four synthetic datasets; returns ``{key: folder}``."""
    return {key: generate(key, dest_root, seed, num_cases, overwrite=overwrite) for key in DATASETS}


@command
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m logvmamba.data.synthetic",
        description="Write synthetic stand-ins of the suite's datasets in nnU-Net v2 raw format.")
    parser.add_argument("dataset", choices=[*DATASETS, "all"])
    parser.add_argument("dest_root", help="folder that receives DatasetXXX_Synth<Name>/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=None, help="training cases per dataset")
    parser.add_argument("--overwrite", action="store_true", help="replace existing folders")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    keys = list(DATASETS) if args.dataset == "all" else [args.dataset]
    folders = [generate(key, args.dest_root, args.seed, args.cases, overwrite=args.overwrite) for key in keys]
    print("\n".join(str(folder) for folder in folders))
    return 0


if __name__ == "__main__":
    sys.exit(main())
