"""Converters from the official releases to nnU-Net v2 raw datasets.

One function per dataset, and a command::

    python -m logvmamba.data.convert <endoscopy|cell|brats|acdc> <source_dir> <dest_dir> [--overwrite]
    python -m logvmamba.data.convert <stardist|mricron|icbm152> <fetched_dir|fetch> <dest_dir> [--overwrite]

``dest_dir`` is the dataset root (what ``nnUNet_raw`` points at); the
converter writes ``<dest_dir>/<DatasetXXX_Name>/`` with ``dataset.json``,
``imagesTr``/``labelsTr`` (and test folders where the release has labelled
test data) and ``splits_final.json``. It builds everything in a temporary
sibling folder and renames it into place only when every case converted, so
a failure leaves nothing behind.

Sources (layouts in docs/datasets.md; a layout detail that could not be
checked against the real download is marked there):

* ``endoscopy``: U-Mamba's nnU-Net package ``Dataset704_Endovis17``
  (``imagesTr/<case>_0000.png`` RGB, ``labelsTr/<case>.png`` 0-7,
  ``imagesTs``/``labelsTs`` likewise). Copied after checking every pair.
* ``cell``: U-Mamba's package ``Dataset703_NeurIPSCell``
  (``imagesTr``/``labelsTr`` with 0 background, 1 interior, 2 boundary;
  ``imagesVal/<case>_0000.png`` and ``labelsVal-instance-mask/<case>_label.tiff``).
  The validation images become ``imagesTs``, their instance masks
  ``labelsTs-instance/<case>.tiff``, and ``labelsTs/<case>.png`` is derived
  from them with :func:`~logvmamba.data.labels.instance_to_semantic`.
* ``brats``: a BraTS 2020 (``MICCAI_BraTS2020_TrainingData/BraTS20_Training_001/
  BraTS20_Training_001_{t1,t1ce,t2,flair,seg}.nii[.gz]``) or BraTS 2021
  (``BraTS2021_00000/BraTS2021_00000_{...}.nii.gz``) training folder. Channels
  0-3 = T1, T1ce, T2, FLAIR; labels remapped as nnU-Net's Dataset137
  converter does (2 -> 1 oedema, 1 -> 2 necrosis, 4 -> 3 enhancing) with the
  three regions in dataset.json. Output ``Dataset082_BraTS2020`` or
  ``Dataset137_BraTS2021``.
* ``acdc``: the ACDC folder with ``training/patientNNN/{Info.cfg,
  patientNNN_frameMM.nii.gz, patientNNN_frameMM_gt.nii.gz, ...}`` (and
  optionally ``testing/``); the ED and ES frames named in ``Info.cfg`` become
  cases ``patientNNN_frameMM``; labels 1 RV, 2 MYO, 3 LV kept as they are.

Real images shipped in packages (:mod:`logvmamba.data.convert_real`, fetched by
:mod:`logvmamba.data.sources`; ``fetch`` as the source means "fetch into the
default cache"; no ``splits_final.json`` is written, the suite's split step
makes it):

* ``stardist``: stardist's nuclei image and instance mask, 16 tiles,
  ``Dataset951_StardistNuclei``.
* ``mricron``: mricron-data's Colin27 T1 and AAL merged into 4 classes, 2 mm
  octants, ``Dataset952_Colin27AAL``.
* ``icbm152``: nilearn's ICBM152 2009a T1 with grey / white matter labels, 2 mm
  octants, ``Dataset953_ICBM152Tissue``.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from logvmamba.cli import add_debug_flag, command
from logvmamba.data.convert_real import REAL_CONVERTERS
from logvmamba.data.errors import DatasetError
from logvmamba.data.formats import (
    png_bit_depth,
    read_instance_file,
    save_instance_mask,
    save_nifti,
    save_png,
    staged_dataset_dir,
    write_dataset_json,
)
from logvmamba.data.labels import instance_to_semantic
from logvmamba.data.registry import get_info

__all__ = ["convert", "convert_endoscopy", "convert_cell", "convert_brats", "convert_acdc", "CONVERTERS", "main"]

logger = logging.getLogger(__name__)

BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
BRATS_LABEL_MAP = {0: 0, 1: 2, 2: 1, 4: 3}  # BraTS -> nnU-Net (Dataset137 converter)
_BRATS_CASE = {"2020": re.compile(r"^BraTS20_Training_\d{3}$"), "2021": re.compile(r"^BraTS2021_\d{5}$")}
_BRATS_NAME = {"2020": "Dataset082_BraTS2020", "2021": "Dataset137_BraTS2021"}


# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------

def _source_dir(source: str | Path) -> Path:
    source = Path(source).expanduser()
    if not source.is_dir():
        raise DatasetError(source, "source folder not found")
    return source


def _locate(source: Path, names: Sequence[str], required: Sequence[str], what: str) -> Path:
    """``source`` itself or ``source/<name>`` / ``source/nnUNet_raw/<name>`` holding ``required`` folders."""
    for base in [source] + [source / n for n in names] + [source / "nnUNet_raw" / n for n in names]:
        if all((base / r).is_dir() for r in required):
            return base
    raise DatasetError(source, f"not {what}: expected the folders {', '.join(r + '/' for r in required)} "
                               f"here or in {names[0]}/ (see docs/datasets.md)")


def _open_png(path: Path, kind: str):
    from PIL import Image

    try:
        image = Image.open(path)
        image.load()
    except Exception as err:
        raise DatasetError(path, f"cannot read {kind} (corrupt or not a png): {type(err).__name__}: {err}") from None
    return image


def _label_array(path: Path, allowed: Sequence[int]) -> np.ndarray:
    image = _open_png(path, "label")
    if image.mode not in ("L", "P", "I", "I;16"):
        raise DatasetError(path, f"label must be a single-channel png, got mode {image.mode!r}")
    array = np.asarray(image)
    bad = sorted(set(np.unique(array).tolist()) - set(allowed))
    if bad:
        raise DatasetError(path, f"label values {bad} are not in {list(allowed)}")
    return array


def _png_pairs(image_dir: Path, label_dir: Path | None, need_labels: bool) -> list[tuple[str, Path, Path | None]]:
    pairs = []
    for image in sorted(image_dir.glob("*.png")):
        if not image.name.endswith("_0000.png"):
            raise DatasetError(image, "expected nnU-Net image names <case>_0000.png")
        case = image.name[: -len("_0000.png")]
        label = None if label_dir is None else label_dir / f"{case}.png"
        if label is not None and not label.is_file():
            if need_labels:
                raise DatasetError(label, f"label file missing for case {case!r}")
            label = None
        pairs.append((case, image, label))
    if not pairs:
        raise DatasetError(image_dir, "no <case>_0000.png images found")
    return pairs


def _copy_png_case(case: str, image: Path, label: Path | None, out_images: Path, out_labels: Path | None,
                   allowed: Sequence[int]) -> tuple[int, int]:
    """Check and copy one image (made RGB if it is not) and its label; returns the image size (H, W)."""
    picture = _open_png(image, "image")
    if picture.mode not in ("RGB", "RGBA", "L", "P"):
        raise DatasetError(image, f"unsupported png mode {picture.mode!r} (expected 8-bit RGB or grayscale)")
    target = out_images / f"{case}_0000.png"
    if picture.mode != "RGB" and png_bit_depth(image) == 16:  # Pillow's convert() would keep 8 of the 16 bits
        raise DatasetError(image, "16-bit png with an alpha channel: dropping it here would drop 8 of the 16 "
                                  "bits too; save the image as 16-bit RGB (copied as stored) or as 8-bit")
    if picture.mode == "RGB":  # 8- or 16-bit: copied as stored, so no bits are lost
        shutil.copyfile(image, target)
    else:
        save_png(target, np.asarray(picture.convert("RGB")))
    size = (picture.height, picture.width)
    if label is not None and out_labels is not None:
        lab = _label_array(label, allowed)
        if lab.shape != size:
            raise DatasetError(label, f"label shape {lab.shape} does not match image shape {size}")
        shutil.copyfile(label, out_labels / f"{case}.png")
    return size


def _finish(folder: Path, key: str, name: str, n_train: int, n_test: int, description: str, **extra) -> None:
    info = get_info(key)
    logger.info("%s: %d training and %d test case(s) converted", name, n_train, n_test)
    content = info.dataset_json(name=name, numTraining=n_train, numTest=n_test, description=description, **extra)
    write_dataset_json(folder, content)
    from logvmamba.data.splits import get_splits

    try:
        get_splits(folder, protocol=info.split_protocol)
    except ValueError as err:  # too few cases for 5 folds: leave the split to the user
        warnings.warn(f"{folder.name}: no splits_final.json written ({err})", stacklevel=3)


# ----------------------------------------------------------------------------
# endoscopy and cell (U-Mamba nnU-Net packages)
# ----------------------------------------------------------------------------

def convert_endoscopy(source_dir: str | Path, dest_dir: str | Path, overwrite: bool = False) -> Path:
    """Convert U-Mamba's ``Dataset704_Endovis17`` package; returns the new dataset folder."""
    info = get_info("endoscopy")
    src = _locate(_source_dir(source_dir), [info.nnunet_name], ["imagesTr", "labelsTr"],
                  "the U-Mamba Dataset704_Endovis17 package")
    allowed = range(len(info.labels))
    with staged_dataset_dir(dest_dir, info.nnunet_name, overwrite) as out:
        counts = {}
        for subset in ("Tr", "Ts"):
            if not (src / f"images{subset}").is_dir():
                counts[subset] = 0
                continue
            (out / f"images{subset}").mkdir()
            (out / f"labels{subset}").mkdir()
            pairs = _png_pairs(src / f"images{subset}", src / f"labels{subset}", need_labels=subset == "Tr")
            logger.info("endoscopy: checking and copying %d images%s case(s) from %s", len(pairs), subset, src)
            for case, image, label in pairs:
                _copy_png_case(case, image, label, out / f"images{subset}", out / f"labels{subset}", allowed)
            counts[subset] = len(pairs)
        _finish(out, "endoscopy", info.nnunet_name, counts["Tr"], counts["Ts"],
                f"{info.title}, {info.url}; converted by logvmamba.data.convert from the nnU-Net package "
                f"of U-Mamba (https://github.com/bowang-lab/U-Mamba).")
    return Path(dest_dir) / info.nnunet_name


def convert_cell(source_dir: str | Path, dest_dir: str | Path, overwrite: bool = False) -> Path:
    """Convert U-Mamba's ``Dataset703_NeurIPSCell`` package (with the validation instance masks)."""
    info = get_info("cell")
    src = _locate(_source_dir(source_dir), [info.nnunet_name], ["imagesTr", "labelsTr"],
                  "the U-Mamba Dataset703_NeurIPSCell package")
    allowed = range(len(info.labels))
    with staged_dataset_dir(dest_dir, info.nnunet_name, overwrite) as out:
        (out / "imagesTr").mkdir()
        (out / "labelsTr").mkdir()
        pairs = _png_pairs(src / "imagesTr", src / "labelsTr", need_labels=True)
        logger.info("cell: checking and copying %d imagesTr case(s) from %s", len(pairs), src)
        for case, image, label in pairs:
            _copy_png_case(case, image, label, out / "imagesTr", out / "labelsTr", allowed)
        n_test = 0
        val_images = src / "imagesVal"
        if val_images.is_dir():
            for sub in ("imagesTs", "labelsTs", "labelsTs-instance"):
                (out / sub).mkdir()
            mask_dir = src / "labelsVal-instance-mask"
            logger.info("cell: converting the validation images and instance masks of %s", src)
            for case, image, _ in _png_pairs(val_images, None, need_labels=False):
                size = _copy_png_case(case, image, None, out / "imagesTs", None, allowed)
                mask_file = mask_dir / f"{case}_label.tiff"
                instances = read_instance_file(mask_file)
                if instances.shape != size:
                    raise DatasetError(mask_file, f"instance mask shape {instances.shape} does not match "
                                                  f"image shape {size}")
                save_instance_mask(out / "labelsTs-instance" / f"{case}.tiff", instances)
                save_png(out / "labelsTs" / f"{case}.png", instance_to_semantic(instances))
                n_test += 1
        _finish(out, "cell", info.nnunet_name, len(pairs), n_test,
                f"{info.title}, {info.url}; converted by logvmamba.data.convert from the nnU-Net package of "
                f"U-Mamba. Instance segmentation task: test instance masks in labelsTs-instance/.",
                instance_masks="labelsTs-instance/<case>.tiff")
    return Path(dest_dir) / info.nnunet_name


# ----------------------------------------------------------------------------
# brats
# ----------------------------------------------------------------------------

def _brats_cases(source: Path) -> tuple[Path, str, list[Path]]:
    for base in [source, *sorted(p for p in source.iterdir() if p.is_dir())]:
        dirs = sorted(p for p in base.iterdir() if p.is_dir())
        for release, pattern in _BRATS_CASE.items():
            cases = [d for d in dirs if pattern.match(d.name)]
            if cases:
                return base, release, cases
    raise DatasetError(source, "no BraTS training cases found: expected folders BraTS20_Training_NNN/ (2020) "
                               "or BraTS2021_NNNNN/ (2021) here or one level below (see docs/datasets.md)")


def _nifti_file(folder: Path, stem: str, what: str) -> Path:
    for ending in (".nii.gz", ".nii"):
        if (folder / f"{stem}{ending}").is_file():
            return folder / f"{stem}{ending}"
    raise DatasetError(folder / f"{stem}.nii.gz", f"{what} file missing")


def _brats_seg_file(folder: Path, case: str) -> Path:
    try:
        return _nifti_file(folder, f"{case}_seg", "segmentation")
    except DatasetError:
        # BraTS 2020 ships one case whose segmentation has another name; accept a lone *seg* file
        others = [p for p in folder.iterdir() if "seg" in p.name.lower() and ".nii" in p.name]
        if len(others) == 1:
            return others[0]
        raise


def _load_nifti(path: Path, kind: str):
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as err:
        raise DatasetError(path, f"cannot read {kind} (corrupt or not NIfTI): {type(err).__name__}: {err}") from None


def _nifti_data(image, path: Path, kind: str) -> np.ndarray:
    try:
        return np.asanyarray(image.dataobj)
    except Exception as err:
        raise DatasetError(path, f"cannot read {kind} (corrupt or not NIfTI): {type(err).__name__}: {err}") from None


def _copy_nifti_gz(src: Path, dst: Path) -> None:
    if src.name.endswith(".nii.gz"):
        shutil.copyfile(src, dst)
    else:
        with open(src, "rb") as fin, gzip.open(dst, "wb", compresslevel=6) as fout:
            shutil.copyfileobj(fin, fout)


def convert_brats(source_dir: str | Path, dest_dir: str | Path, overwrite: bool = False,
                  release: str | None = None) -> Path:
    """Convert a BraTS 2020 or 2021 training folder (release detected from the case names)."""
    base, found, cases = _brats_cases(_source_dir(source_dir))
    if release is not None and str(release) != found:
        raise DatasetError(base, f"asked for BraTS {release} but the case folders are BraTS {found}")
    name = _BRATS_NAME[found]
    with staged_dataset_dir(dest_dir, name, overwrite) as out:
        (out / "imagesTr").mkdir()
        (out / "labelsTr").mkdir()
        logger.info("brats: converting %d BraTS %s case(s) from %s", len(cases), found, base)
        for case_dir in cases:
            case = case_dir.name
            seg_file = _brats_seg_file(case_dir, case)
            seg_img = _load_nifti(seg_file, "segmentation")
            for c, modality in enumerate(BRATS_MODALITIES):
                src = _nifti_file(case_dir, f"{case}_{modality}", f"{modality} channel")
                shape = _load_nifti(src, "image").shape
                if shape[:3] != seg_img.shape[:3]:
                    raise DatasetError(src, f"image shape {shape} does not match segmentation shape {seg_img.shape}")
                _copy_nifti_gz(src, out / "imagesTr" / f"{case}_{c:04d}.nii.gz")
            seg = _nifti_data(seg_img, seg_file, "segmentation")
            seg = np.rint(seg).astype(np.int64)
            bad = sorted(set(np.unique(seg).tolist()) - set(BRATS_LABEL_MAP))
            if bad:
                raise DatasetError(seg_file, f"label values {bad} are not BraTS labels (0, 1, 2, 4)")
            lut = np.zeros(5, np.uint8)
            for k, v in BRATS_LABEL_MAP.items():
                lut[k] = v
            save_nifti(out / "labelsTr" / f"{case}.nii.gz", lut[seg], like=seg_img)
        info = get_info("brats")
        _finish(out, "brats", name, len(cases), 0,
                f"BraTS {found} training data converted by logvmamba.data.convert (channels T1, T1ce, T2, "
                f"FLAIR; labels remapped as nnU-Net's Dataset137 converter). Source: "
                f"{info.url if found == '2020' else 'https://www.synapse.org/#!Synapse:syn25829067/wiki/610863'}",
                label_convention="BraTS 2 (oedema) -> 1, 1 (necrosis / non-enhancing core) -> 2, 4 (enhancing) -> 3",
                brats_release=found)
    return Path(dest_dir) / name


# ----------------------------------------------------------------------------
# acdc
# ----------------------------------------------------------------------------

def _read_info_cfg(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise DatasetError(path, "missing (ACDC patient folders carry an Info.cfg naming the ED and ES frames)")
    fields = {}
    for line in path.read_text(errors="replace").splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields[key.strip()] = value.strip()
    for key in ("ED", "ES"):
        if not re.fullmatch(r"\d+", fields.get(key, "")):
            raise DatasetError(path, f"malformed: no integer {key} frame")
    return fields


def _convert_acdc_frame(patient: Path, case: str, out: Path, subset: str, allowed: set[int]) -> None:
    image_file = _nifti_file(patient, case, "frame image")
    image = _load_nifti(image_file, "image")
    if len(image.shape) != 3:
        raise DatasetError(image_file, f"expected a 3D frame, got shape {image.shape}")
    _copy_nifti_gz(image_file, out / f"images{subset}" / f"{case}_0000.nii.gz")
    try:
        gt_file = _nifti_file(patient, f"{case}_gt", "ground-truth")
    except DatasetError:
        if subset == "Tr":
            raise
        return  # test frames may come without ground truth
    gt = _load_nifti(gt_file, "label")
    if gt.shape != image.shape:
        raise DatasetError(gt_file, f"label shape {gt.shape} does not match image shape {image.shape}")
    values = set(np.unique(_nifti_data(gt, gt_file, "label")).tolist())
    if not values <= allowed:
        raise DatasetError(gt_file, f"label values {sorted(values - allowed)} are not in {sorted(allowed)}")
    _copy_nifti_gz(gt_file, out / f"labels{subset}" / f"{case}.nii.gz")


def convert_acdc(source_dir: str | Path, dest_dir: str | Path, overwrite: bool = False) -> Path:
    """Convert the ACDC release (``training/`` and, when present, ``testing/``)."""
    info = get_info("acdc")
    source = _source_dir(source_dir)
    src = _locate(source, ["database", "ACDC", "ACDC/database"], ["training"], "the ACDC release")
    allowed = set(range(len(info.labels)))
    with staged_dataset_dir(dest_dir, info.nnunet_name, overwrite) as out:
        counts = {"Tr": 0, "Ts": 0}
        for folder, subset in (("training", "Tr"), ("testing", "Ts")):
            if not (src / folder).is_dir():
                continue
            patients = sorted(p for p in (src / folder).iterdir() if p.is_dir() and re.fullmatch(r"patient\d+", p.name))
            if not patients:
                raise DatasetError(src / folder, "no patientNNN/ folders found")
            (out / f"images{subset}").mkdir()
            (out / f"labels{subset}").mkdir()
            logger.info("acdc: converting the ED and ES frames of %d %s patient(s)", len(patients), folder)
            for patient in patients:
                fields = _read_info_cfg(patient / "Info.cfg")
                for frame in sorted({int(fields["ED"]), int(fields["ES"])}):
                    _convert_acdc_frame(patient, f"{patient.name}_frame{frame:02d}", out, subset, allowed)
                    counts[subset] += 1
            if not any((out / f"labels{subset}").iterdir()):  # testing/ without ground truth
                (out / f"labels{subset}").rmdir()
        _finish(out, "acdc", info.nnunet_name, counts["Tr"], counts["Ts"],
                f"{info.title}, {info.url}; ED and ES frames converted by logvmamba.data.convert; "
                f"labels 1 RV, 2 myocardium (MLV), 3 LV cavity (LVC) as in nnU-Net's Dataset027_ACDC.")
    return Path(dest_dir) / info.nnunet_name


CONVERTERS: dict[str, Callable[..., Path]] = {
    "endoscopy": convert_endoscopy,
    "cell": convert_cell,
    "brats": convert_brats,
    "acdc": convert_acdc,
    **REAL_CONVERTERS,
}


def convert(key: str, source_dir: str | Path, dest_dir: str | Path, overwrite: bool = False, **kwargs) -> Path:
    """Run the converter of dataset ``key``; returns the new dataset folder."""
    if key not in REAL_CONVERTERS:
        get_info(key)
    return CONVERTERS[key](source_dir, dest_dir, overwrite=overwrite, **kwargs)


@command
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m logvmamba.data.convert",
        description="Convert an official dataset release into an nnU-Net v2 raw dataset.")
    parser.add_argument("dataset", choices=list(CONVERTERS))
    parser.add_argument("source_dir", help="the downloaded (and unpacked) release; for stardist, mricron and "
                                           "icbm152 the fetched folder or `fetch`")
    parser.add_argument("dest_dir", help="dataset root that receives DatasetXXX_Name/ (e.g. $nnUNet_raw)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    parser.add_argument("--release", choices=["2020", "2021"], default=None,
                        help="brats only: require this BraTS release (default: detected)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    kwargs = {"release": args.release} if args.dataset == "brats" else {}
    if args.release and args.dataset != "brats":
        parser.error("--release applies to brats only")
    print(convert(args.dataset, args.source_dir, args.dest_dir, overwrite=args.overwrite, **kwargs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
