"""Converters from the real images shipped in packages (:mod:`logvmamba.data.sources`) to nnU-Net v2 raw datasets.

Each converter takes the fetched folder (None or ``"fetch"``: fetch into the
default cache) and the dataset root, builds ``<dest>/DatasetXXX_Name/`` in a
staged folder (nothing is left behind on failure) and returns it. None
writes ``splits_final.json`` or ``imagesTs``: the suite's split step makes a
5-fold split of the training cases. dataset.json records the source package,
version, licence and the sha256 of every file read (``"provenance"``), and
per case where it lies in the source (``"cases"``).

``Dataset951_StardistNuclei`` (2D, ``.tif``)
    stardist's 512 x 512 uint16 fluorescence image of nuclei (2018 Data
    Science Bowl) and its instance mask, cut into a 4 x 4 grid of
    non-overlapping 128 x 128 tiles: 16 cases, enough for 5-fold
    cross-validation with every fold holding 3-4 tiles of about 8-10 nuclei
    each. Images keep their uint16 values; labels 0 background, 1 interior,
    2 boundary come from each tile's instance mask through
    :func:`~logvmamba.data.labels.instance_to_semantic` (so a nucleus cut by a
    tile border has no boundary along the cut); the instance masks, renumbered
    1..K per tile in the order of their original ids, are in
    ``labelsTr-instance/<case>.tiff``. Spacing 1 (the TIFF has no physical size).

``Dataset952_Colin27AAL`` (3D NIfTI)
    mricron-data's Colin27 T1 (``ch2bet``, skull-stripped) and the AAL atlas
    (116 regions, same 181 x 217 x 181 1 mm grid: shapes and affines are
    checked). AAL regions are merged into three classes (:data:`AAL_CLASSES`,
    :func:`aal_class_lut`)::

        1 cerebral_cortex  AAL 1-90 (both hemispheres), except 71-78
        2 cerebellum       AAL 91-108 (cerebellar hemispheres) and 109-116 (vermis)
        3 deep_grey        AAL 71-78: caudate, putamen, pallidum, thalamus (both sides)

    Left and right are one class: the training augmentation mirrors every axis (as
    nnU-Net's does), which turns a left hemisphere into a right one, so a left / right
    split cannot be learnt under it (trained models scored at the untrained floor).

    "Cortex" here is all cerebral AAL grey matter outside the deep nuclei, so
    it includes hippocampus, parahippocampal gyrus and amygdala (AAL 37-42).
    When ``aal.nii.txt`` is present its names are checked against this rule.

``Dataset953_ICBM152Tissue`` (3D NIfTI)
    nilearn's ICBM152 2009a symmetric T1 (skull-stripped, uint8) and its grey
    and white matter probability maps (uint8, probability x 255); the wheel
    ships no CSF map and no brain mask. Label = argmax over (other, grey
    matter, white matter) of the 2 mm block-averaged probabilities, with
    p_other = 1 - p_gm - p_wm (CSF and everything outside the brain): a voxel
    is tissue when its tissue probability is the largest of the three (ties go
    to the lower label). 0 background, 1 grey matter, 2 white matter.

Both 3D datasets are cropped to the bounding box of the brain (image > 0 or
label / tissue present) plus 2 mm, its size rounded to whole 2 mm blocks,
downsampled 1 mm -> 2 mm (image: mean of each 2 x 2 x 2 block; Colin27
label: the most frequent merged class of the block, ties to the lower class;
ICBM: argmax of the block-mean probabilities) and cut into 8 cases: ICBM152 into
the octants of the box (halves along each array axis, about 38 x 47 x 40 voxels;
tissue classes look alike everywhere), Colin27 into 8 axial slabs along the
array axis nearest world z (about 75 x 93 x 10 voxels), so that every case
shows one level of the whole brain with its midline.
Each case's affine is the source affine composed with the crop, the block
size (spacing 2 mm, read from the header's 1 mm) and the half-block shift of
the block centre, and the case's offset in the box: voxel (0, 0, 0) of a case sits at
the world position of the centre of its first 2 x 2 x 2 block of source voxels.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from logvmamba.data.errors import DatasetError
from logvmamba.data.formats import (
    affine_spacing, read_tiff, save_instance_mask, save_nifti, save_tiff, staged_dataset_dir, write_dataset_json,
)
from logvmamba.data.labels import instance_to_semantic
from logvmamba.data.sources import SOURCES, fetch, provenance, source_file

__all__ = [
    "STARDIST_NAME", "COLIN27_NAME", "ICBM152_NAME", "AAL_CLASSES", "ICBM152_CLASSES",
    "aal_class_lut", "convert_stardist", "convert_mricron", "convert_icbm152", "REAL_CONVERTERS",
]

logger = logging.getLogger(__name__)

STARDIST_NAME = "Dataset951_StardistNuclei"
COLIN27_NAME = "Dataset952_Colin27AAL"
ICBM152_NAME = "Dataset953_ICBM152Tissue"

TILE = 128            # stardist tile side (pixels)
FACTOR = 2            # 3D downsampling: 2 x 2 x 2 source voxels per case voxel
MARGIN = 2            # source voxels kept around the brain's bounding box
SLABS = 8             # Colin27: axial slabs, each one level of the whole brain

STARDIST_CLASSES = {"background": 0, "interior": 1, "boundary": 2}
# one cortex class, not left / right: training mirrors every axis (as nnU-Net), which swaps the hemispheres
AAL_CLASSES = {"background": 0, "cerebral_cortex": 1, "cerebellum": 2, "deep_grey": 3}
ICBM152_CLASSES = {"background": 0, "grey_matter": 1, "white_matter": 2}

_AAL_DEEP = range(71, 79)
_AAL_DEEP_NAMES = ("Caudate", "Putamen", "Pallidum", "Thalamus")
_AAL_CEREBELLUM = range(91, 117)
_AAL_MAX = 116

_STARDIST_FILES = ("stardist/data/images/img2d.tif", "stardist/data/images/mask2d.tif")
_MRICRON_FILES = ("ch2bet.nii.gz", "aal.nii.gz", "aal.nii.txt")
_ICBM_FILES = tuple(f"nilearn/datasets/data/mni_icbm152_{m}_tal_nlin_sym_09a_converted.nii.gz"
                    for m in ("t1", "gm", "wm"))


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------

def _source_folder(src: str | os.PathLike | None, source: str) -> Path:
    if src is None or os.fspath(src) == "fetch":
        return fetch(source)
    folder = Path(src).expanduser()
    if not folder.is_dir():
        raise DatasetError(folder, f"source folder not found (fetch it with `python -m logvmamba.data.sources "
                                   f"{source}`, or pass `fetch`)")
    return folder


def _dataset_json(source: str, folder: Path, name: str, labels: dict, channel: str, ending: str, n: int,
                  description: str, **extra) -> dict:
    src = SOURCES[source]
    return {"channel_names": {"0": channel}, "labels": labels, "numTraining": n, "numTest": 0,
            "file_ending": ending, "name": name, "description": description, "reference": src.origin,
            "licence": src.licence, **extra, "provenance": provenance(source, folder)}


def _read_tiff(path: Path) -> np.ndarray:
    try:
        return read_tiff(path)
    except Exception as err:
        raise DatasetError(path, f"cannot read TIFF: {type(err).__name__}: {err}") from None


def _load_nifti(path: Path):
    import nibabel as nib

    try:
        image = nib.load(str(path))
        return image, np.asanyarray(image.dataobj)
    except Exception as err:
        raise DatasetError(path, f"cannot read NIfTI: {type(err).__name__}: {err}") from None


def _same_grid(ref_path: Path, ref, path: Path, image) -> None:
    if image.shape[:3] != ref.shape[:3]:
        raise DatasetError(path, f"shape {image.shape} differs from {ref_path.name} {ref.shape}")
    if not np.allclose(image.affine, ref.affine, atol=1e-4):
        raise DatasetError(path, f"affine differs from {ref_path.name}'s: the volumes are not on one grid")


def _box(mask: np.ndarray, factor: int, margin: int) -> tuple[tuple[int, int], ...]:
    """Per axis (start, stop): the mask's bounding box plus ``margin``, size a multiple of ``factor``."""
    if not mask.any():
        raise ValueError("empty mask")
    box = []
    for axis, n in enumerate(mask.shape):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        start, stop = max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, n)
        extra = -(stop - start) % factor
        grow = min(extra, n - stop)           # grow at the end, then at the start, else shrink
        stop += grow
        shift = min(extra - grow, start)
        start -= shift
        stop -= (stop - start) % factor
        box.append((start, stop))
    return tuple(box)


def _blocks(array: np.ndarray, factor: int) -> np.ndarray:
    """``(X, Y, Z)`` -> ``(X/f, Y/f, Z/f, f**3)``: the voxels of each block."""
    x, y, z = (s // factor for s in array.shape)
    view = array.reshape(x, factor, y, factor, z, factor).transpose(0, 2, 4, 1, 3, 5)
    return view.reshape(x, y, z, factor ** 3)


def _block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    return _blocks(array.astype(np.float32), factor).mean(axis=-1, dtype=np.float64).astype(np.float32)


def _block_majority(label: np.ndarray, factor: int, n_classes: int) -> np.ndarray:
    """The most frequent class of each block (ties: the lower class)."""
    blocks = _blocks(label, factor)
    counts = np.stack([(blocks == c).sum(axis=-1) for c in range(n_classes)], axis=-1)
    return counts.argmax(axis=-1).astype(np.uint8)


def _downsampled_affine(affine: np.ndarray, start: np.ndarray, factor: int) -> np.ndarray:
    """Affine of the block grid: case voxel i is the centre of source voxels start + f*i .. start + f*i + f-1."""
    step = np.eye(4)
    step[:3, :3] *= factor
    step[:3, 3] = start + (factor - 1) / 2.0
    return affine @ step


def _write_blocks(out: Path, stem: str, image: np.ndarray, label: np.ndarray, affine: np.ndarray,
                  start: np.ndarray, factor: int, splits=(2, 2, 2)) -> dict:
    """Cut ``image``/``label`` (block grid from source voxel ``start``) into ``splits[a]`` near-equal
    parts along each array axis ``a``; one case per part, named by its index; returns their records."""
    (out / "imagesTr").mkdir()
    (out / "labelsTr").mkdir()
    edges = [np.linspace(0, n, k + 1).round().astype(int) for n, k in zip(image.shape, splits)]
    records = {}
    for index in np.ndindex(*splits):
        lo = np.array([edges[a][index[a]] for a in range(3)])
        hi = np.array([edges[a][index[a] + 1] for a in range(3)])
        region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        shift = np.eye(4)
        shift[:3, 3] = lo
        case_affine = affine @ shift
        case = f"{stem}_x{index[0]}y{index[1]}z{index[2]}"
        save_nifti(out / "imagesTr" / f"{case}_0000.nii.gz", np.ascontiguousarray(image[region]), affine=case_affine)
        save_nifti(out / "labelsTr" / f"{case}.nii.gz", np.ascontiguousarray(label[region]), affine=case_affine)
        records[case] = {"shape": [int(v) for v in hi - lo],
                         "source_start_voxel": [int(v) for v in start + factor * lo],
                         "source_stop_voxel": [int(v) for v in start + factor * hi]}
    return records


def _superior_axis(affine: np.ndarray) -> int:
    """The array axis that runs most nearly along world z (inferior -> superior)."""
    return int(np.argmax(np.abs(affine[2, :3])))


def _geometry(affine: np.ndarray, box, factor: int) -> dict:
    return {"factor": factor, "source_spacing": list(affine_spacing(affine)),
            "spacing": [s * factor for s in affine_spacing(affine)],
            "source_box": [list(b) for b in box],
            "image": f"mean of each {factor}x{factor}x{factor} block of source voxels"}


# ----------------------------------------------------------------------------
# stardist nuclei (2D)
# ----------------------------------------------------------------------------

def convert_stardist(src: str | os.PathLike | None, dest: str | os.PathLike, overwrite: bool = False) -> Path:
    """Tile stardist's nuclei image and instance mask into ``Dataset951_StardistNuclei``; returns the folder."""
    folder = _source_folder(src, "stardist")
    image_file, mask_file = (source_file(folder, m) for m in _STARDIST_FILES)
    image, mask = _read_tiff(image_file), _read_tiff(mask_file)
    if image.ndim != 2:
        raise DatasetError(image_file, f"expected a single-channel 2D image, got shape {image.shape}")
    if mask.shape != image.shape or not np.issubdtype(mask.dtype, np.integer):
        raise DatasetError(mask_file, f"expected an integer instance mask of shape {image.shape}, got "
                                      f"{mask.dtype} {mask.shape}")
    if image.shape[0] % TILE or image.shape[1] % TILE:
        raise DatasetError(image_file, f"shape {image.shape} is not a whole number of {TILE} x {TILE} tiles")
    rows, cols = image.shape[0] // TILE, image.shape[1] // TILE
    n_instances = len(np.unique(mask[mask > 0]))
    logger.info("stardist: %s %s (%s), %d instances -> %d x %d tiles of %d", image_file.name, image.shape,
                image.dtype, n_instances, rows, cols, TILE)
    with staged_dataset_dir(dest, STARDIST_NAME, overwrite) as out:
        for sub in ("imagesTr", "labelsTr", "labelsTr-instance"):
            (out / sub).mkdir()
        cases = {}
        for r in range(rows):
            for c in range(cols):
                case = f"nuclei_r{r}c{c}"
                region = (slice(r * TILE, (r + 1) * TILE), slice(c * TILE, (c + 1) * TILE))
                ids, inverse = np.unique(mask[region], return_inverse=True)
                tile = inverse.reshape(TILE, TILE)
                if ids[0] != 0:       # no background in the tile: ids start at 1 anyway
                    tile = tile + 1
                save_tiff(out / "imagesTr" / f"{case}_0000.tif", np.ascontiguousarray(image[region]))
                save_tiff(out / "labelsTr" / f"{case}.tif", instance_to_semantic(tile))
                save_instance_mask(out / "labelsTr-instance" / f"{case}.tiff", tile)
                cases[case] = {"source_origin_pixel": [r * TILE, c * TILE], "shape": [TILE, TILE],
                               "instances": int(tile.max())}
        description = (f"The 2D nuclei image and mask shipped in stardist {SOURCES['stardist'].version} "
                       f"(2018 Data Science Bowl), cut into {rows} x {cols} tiles of {TILE} x {TILE} pixels; "
                       f"labels 0 background, 1 interior, 2 boundary from the instance masks in "
                       f"labelsTr-instance/ (renumbered 1..K per tile). Converted by logvmamba.data.convert_real.")
        content = _dataset_json("stardist", folder, STARDIST_NAME, dict(STARDIST_CLASSES), "fluorescence",
                                ".tif", len(cases), description, scoring="instances",
                                instance_masks="labelsTr-instance/<case>.tiff",
                                source_instances=n_instances, cases=cases)
        write_dataset_json(out, content)
    logger.info("stardist: %d cases written to %s", len(cases), Path(dest) / STARDIST_NAME)
    return Path(dest) / STARDIST_NAME


# ----------------------------------------------------------------------------
# Colin27 + AAL (3D)
# ----------------------------------------------------------------------------

def aal_class_lut(max_index: int = _AAL_MAX) -> np.ndarray:
    """AAL index (0..``max_index``) -> merged class of :data:`AAL_CLASSES` (see the module docstring)."""
    lut = np.zeros(max_index + 1, np.uint8)
    for index in range(1, max_index + 1):
        if index in _AAL_DEEP:
            lut[index] = AAL_CLASSES["deep_grey"]
        elif index in _AAL_CEREBELLUM:
            lut[index] = AAL_CLASSES["cerebellum"]
        else:
            lut[index] = AAL_CLASSES["cerebral_cortex"]
    return lut


def _aal_names(path: Path) -> dict[int, str]:
    names = {}
    for line in path.read_text(errors="replace").splitlines():
        match = re.match(r"^\s*(\d+)\s+(\S+)", line)
        if match:
            names[int(match.group(1))] = match.group(2)
    return names


def _check_aal_names(path: Path, names: dict[int, str], lut: np.ndarray) -> None:
    """The name table agrees with the index rule of :func:`aal_class_lut`."""
    for index, name in names.items():
        if index > _AAL_MAX:
            raise DatasetError(path, f"AAL index {index} ({name}) beyond the 116 regions of AAL1")
        cls = int(lut[index])
        ok = {AAL_CLASSES["deep_grey"]: name.startswith(_AAL_DEEP_NAMES),
              AAL_CLASSES["cerebellum"]: name.startswith(("Cerebelum", "Cerebellum", "Vermis")),
              AAL_CLASSES["cerebral_cortex"]: name.endswith(("_L", "_R")) and not name.startswith(_AAL_DEEP_NAMES)
              and not name.startswith(("Cerebelum", "Cerebellum", "Vermis"))}[cls]
        if not ok:
            raise DatasetError(path, f"AAL region {index} {name!r} does not fit the merge rule (class {cls}); "
                                     f"not the AAL1 table this converter was written for")


def convert_mricron(src: str | os.PathLike | None, dest: str | os.PathLike, overwrite: bool = False) -> Path:
    """Colin27 T1 + merged AAL classes at 2 mm in 8 axial slabs, ``Dataset952_Colin27AAL``; returns the folder."""
    folder = _source_folder(src, "mricron")
    t1_file, aal_file = source_file(folder, _MRICRON_FILES[0]), source_file(folder, _MRICRON_FILES[1])
    t1_img, t1 = _load_nifti(t1_file)
    aal_img, aal = _load_nifti(aal_file)
    _same_grid(t1_file, t1_img, aal_file, aal_img)
    if t1.ndim != 3:
        raise DatasetError(t1_file, f"expected a 3D volume, got shape {t1.shape}")
    aal = np.asarray(aal)
    if not np.array_equal(aal, np.rint(aal)) or aal.min() < 0 or aal.max() > _AAL_MAX:
        values = np.unique(aal)
        raise DatasetError(aal_file, f"values {values[:3].tolist()}..{values[-3:].tolist()} are not AAL1 "
                                     f"indices 0..{_AAL_MAX}")
    lut = aal_class_lut()
    names_file = folder / _MRICRON_FILES[2]
    names = _aal_names(names_file) if names_file.is_file() else {}
    if names:
        _check_aal_names(names_file, names, lut)
    merged = lut[aal.astype(np.int64)]
    box = _box((t1 > 0) | (merged > 0), FACTOR, MARGIN)
    crop = tuple(slice(a, b) for a, b in box)
    start = np.array([a for a, _ in box])
    image = _block_mean(np.asarray(t1)[crop], FACTOR)
    label = _block_majority(merged[crop], FACTOR, len(AAL_CLASSES))
    affine = _downsampled_affine(t1_img.affine, start, FACTOR)
    logger.info("mricron: %s %s -> box %s -> %s at %s mm", t1_file.name, t1.shape, box, image.shape,
                affine_spacing(affine))
    with staged_dataset_dir(dest, COLIN27_NAME, overwrite) as out:
        # axial slabs: each case is one level of the whole brain (both hemispheres, midline kept)
        splits = tuple(SLABS if a == _superior_axis(affine) else 1 for a in range(3))
        cases = _write_blocks(out, "colin27", image, label, affine, start, FACTOR, splits)
        description = ("Colin27 T1 (ch2bet) with the AAL atlas merged into cerebral cortex, "
                       "cerebellum + vermis and deep grey nuclei, from the Debian package mricron-data; "
                       f"downsampled to {FACTOR} mm and cut into {SLABS} axial slabs. Converted by "
                       "logvmamba.data.convert_real.")
        mapping = {name: [int(i) for i in np.flatnonzero(lut == value) if i > 0]
                   for name, value in AAL_CLASSES.items() if value > 0}
        content = _dataset_json(
            "mricron", folder, COLIN27_NAME, dict(AAL_CLASSES), "T1", ".nii.gz", len(cases), description,
            scoring="classes", aal_merge=mapping,
            aal_names={str(k): v for k, v in sorted(names.items())},
            geometry={**_geometry(t1_img.affine, box, FACTOR),
                      "label": "most frequent merged class of each block (ties to the lower class)"},
            cases=cases)
        write_dataset_json(out, content)
    return Path(dest) / COLIN27_NAME


# ----------------------------------------------------------------------------
# ICBM152 2009a tissue classes (3D)
# ----------------------------------------------------------------------------

def _probability(path: Path, data: np.ndarray) -> np.ndarray:
    if data.dtype == np.uint8:
        return data.astype(np.float32) / 255.0
    data = np.asarray(data, np.float32)
    if data.min() < -1e-3 or data.max() > 1 + 1e-3:
        raise DatasetError(path, f"probabilities outside [0, 1]: [{data.min()}, {data.max()}]")
    return data


def convert_icbm152(src: str | os.PathLike | None, dest: str | os.PathLike, overwrite: bool = False) -> Path:
    """ICBM152 2009a T1 + grey / white matter labels at 2 mm in 8 octants, ``Dataset953_ICBM152Tissue``."""
    folder = _source_folder(src, "nilearn")
    files = [source_file(folder, m) for m in _ICBM_FILES]
    (t1_img, t1), (gm_img, gm), (wm_img, wm) = (_load_nifti(f) for f in files)
    for path, img in zip(files[1:], (gm_img, wm_img)):
        _same_grid(files[0], t1_img, path, img)
    p_gm, p_wm = _probability(files[1], gm), _probability(files[2], wm)
    if float((p_gm + p_wm).max()) > 1.0 + 1e-2:
        raise DatasetError(files[2], "grey + white matter probabilities exceed 1")
    box = _box((np.asarray(t1) > 0) | (p_gm + p_wm > 0), FACTOR, MARGIN)
    crop = tuple(slice(a, b) for a, b in box)
    start = np.array([a for a, _ in box])
    image = _block_mean(np.asarray(t1)[crop], FACTOR)
    p_gm, p_wm = _block_mean(p_gm[crop], FACTOR), _block_mean(p_wm[crop], FACTOR)
    p_other = np.clip(1.0 - p_gm - p_wm, 0.0, 1.0)
    label = np.stack([p_other, p_gm, p_wm]).argmax(axis=0).astype(np.uint8)
    affine = _downsampled_affine(t1_img.affine, start, FACTOR)
    logger.info("icbm152: %s %s -> box %s -> %s at %s mm", files[0].name, t1.shape, box, image.shape,
                affine_spacing(affine))
    with staged_dataset_dir(dest, ICBM152_NAME, overwrite) as out:
        cases = _write_blocks(out, "icbm152", image, label, affine, start, FACTOR)
        description = (f"ICBM152 2009a symmetric T1 template with grey / white matter labels from its "
                       f"probability maps, shipped in nilearn {SOURCES['nilearn'].version}; downsampled to "
                       f"{FACTOR} mm and cut into 8 octants. Converted by logvmamba.data.convert_real.")
        content = _dataset_json(
            "nilearn", folder, ICBM152_NAME, dict(ICBM152_CLASSES), "T1", ".nii.gz", len(cases), description,
            scoring="classes",
            label_rule=("argmax over (1 - p_gm - p_wm, p_gm, p_wm) of the block-mean probabilities "
                        "(uint8 / 255); ties to the lower label; no CSF map is shipped"),
            geometry={**_geometry(t1_img.affine, box, FACTOR), "label": "argmax of block-mean probabilities"},
            cases=cases)
        write_dataset_json(out, content)
    return Path(dest) / ICBM152_NAME


REAL_CONVERTERS: dict[str, Callable[..., Path]] = {
    "stardist": convert_stardist,
    "mricron": convert_mricron,
    "icbm152": convert_icbm152,
}
