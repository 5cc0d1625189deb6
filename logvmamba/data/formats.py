"""The file formats of a raw dataset: png, NIfTI and TIFF read and write, dataset.json, staged folders.

Reading goes through MONAI's ``PILReader`` and ``NibabelReader`` and keeps the
stored axis order: a png as ``(C, H, W)``, a NIfTI volume as ``(1, X, Y, Z)``
(no reorientation, no resampling). Every writer replaces its file atomically
(:func:`logvmamba.io.atomic_write`), so a reader never sees half a file; the
converters, the synthetic generators and the prediction writer all use these.

Reading errors are :class:`~logvmamba.data.errors.DatasetError`, naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from logvmamba.data.errors import DatasetError
from logvmamba.io import atomic_write, atomic_write_text

__all__ = [
    "SUPPORTED_FILE_ENDINGS",
    "INSTANCE_SUFFIX",
    "file_ending",
    "affine_spacing",
    "case_and_channel",
    "channel_files",
    "read_image_file",
    "read_instance_file",
    "read_tiff",
    "save_png",
    "save_nifti",
    "save_image_file",
    "save_tiff",
    "save_instance_mask",
    "write_dataset_json",
    "staged_dataset_dir",
]

SUPPORTED_FILE_ENDINGS = (".png", ".tif", ".tiff", ".nii.gz", ".nii")
INSTANCE_SUFFIX = ".tiff"


def file_ending(path: str | os.PathLike) -> str:
    """The dataset file ending of ``path`` (``.nii.gz`` counts as one), else its last suffix."""
    path = Path(path)
    for ending in SUPPORTED_FILE_ENDINGS:
        if path.name.endswith(ending):
            return ending
    return path.suffix


# ----------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------

_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def affine_spacing(affine) -> tuple[float, ...]:
    """Voxel size per array axis: the lengths of the affine's first three columns."""
    affine = np.asarray(affine, dtype=np.float64)
    return tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))


def case_and_channel(path: str | os.PathLike) -> tuple[str, int | None]:
    """(case id, channel index) of ``<case>_<CCCC><ending>``; (name without ending, None) otherwise."""
    name = Path(path).name
    stem = name[: len(name) - len(file_ending(name))]
    match = _CHANNEL_RE.match(stem)
    return (match["case"], int(match["channel"])) if match else (stem, None)


def channel_files(folder: str | os.PathLike, ending: str) -> dict[str, dict[int, Path]]:
    """Case id -> {channel index: file} of an nnU-Net image folder (``<case>_<CCCC><ending>``).

    Raises:
        DatasetError: a file with the ending whose name lacks the 4-digit channel index.
    """
    cases: dict[str, dict[int, Path]] = {}
    for file in sorted(Path(folder).iterdir()):
        if file.name.startswith(".") or not file.name.endswith(ending):
            continue
        case_id, channel = case_and_channel(file)
        if channel is None:
            raise DatasetError(file, f"image file names must end with _CCCC{ending} (4-digit channel index)")
        cases.setdefault(case_id, {})[channel] = file
    return cases


def read_tiff(path: Path) -> np.ndarray:
    """A TIFF's first series (tifffile), values and dtype as stored."""
    import tifffile

    return np.asarray(tifffile.imread(str(path)))


def _tiff_channels_first(path: Path, array: np.ndarray, kind: str) -> np.ndarray:
    """(H, W), (H, W, C) or (C, H, W) with C <= 4 as (C, H, W)."""
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3 and array.shape[-1] <= 4 < min(array.shape[:2]):
        return np.moveaxis(array, -1, 0)
    if array.ndim == 3 and array.shape[0] <= 4 < min(array.shape[1:]):
        return array
    raise DatasetError(path, f"{kind} must be a 2D TIFF (H, W) or with up to 4 channels, got shape {array.shape}")


def read_image_file(path: str | os.PathLike, kind: str = "image") -> tuple[np.ndarray, dict]:
    """Read one png, TIFF or NIfTI file (Pillow for png, tifffile for TIFF, MONAI's NIfTI reader).

    Returns:
        ``(array, meta)``: a png or 2D TIFF as ``(C, H, W)`` (``C`` = 1, 3
        or 4 as stored); a NIfTI file as ``(1, X, Y, Z)``. ``meta`` holds ``spacing``
        (per spatial axis), ``affine`` (4x4, as MONAI's reader gives it) and
        ``header`` (the nibabel header as stored, for :func:`save_nifti`'s
        ``like``); both None for a png or TIFF (spacing 1).

    Raises:
        DatasetError: the file is missing, unreadable or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, f"{kind} file missing")
    ending = file_ending(path)
    try:
        if ending == ".png":
            # palette images hold colours, not channels; label maps keep their indices
            from PIL import Image

            with Image.open(path) as im:  # Pillow alone: importing MONAI for a png costs seconds per job
                array = np.asarray(im.convert("RGB") if kind == "image" and im.mode in ("P", "PA") else im)
            array = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
            meta = {"spacing": (1.0, 1.0), "affine": None, "header": None}
        elif ending in (".tif", ".tiff"):
            array = _tiff_channels_first(path, read_tiff(path), kind)
            meta = {"spacing": (1.0, 1.0), "affine": None, "header": None}
        elif ending in (".nii.gz", ".nii"):
            import nibabel as nib
            from monai.data import NibabelReader

            # MONAI's reader may "correct" a header whose pixdim disagrees with its affine; the
            # writer's reference must be the header as stored
            stored_header = nib.load(str(path)).header
            reader = NibabelReader()
            array, header = reader.get_data(reader.read(str(path)))
            array = np.asarray(array)
            while array.ndim > 3 and array.shape[-1] == 1:
                array = array[..., 0]
            affine = np.asarray(header["affine"], dtype=np.float64)
            spacing = affine_spacing(affine)
            meta = {"spacing": spacing, "affine": affine, "header": stored_header}
            if array.ndim != 3:
                raise DatasetError(path, f"{kind} must be a 3D volume, got shape {array.shape}")
            array = array[None]
        else:
            raise DatasetError(path, f"unsupported file type {ending!r} (supported: {list(SUPPORTED_FILE_ENDINGS)})")
    except DatasetError:
        raise
    except Exception as err:  # corrupt or truncated file: any reader error
        raise DatasetError(path, f"cannot read {kind} (corrupt or not a {ending} file): "
                                 f"{type(err).__name__}: {err}") from None
    return array, meta


def read_instance_file(path: str | os.PathLike) -> np.ndarray:
    """Read an instance mask (``.tiff``; 0 = background, 1..N = instances) as int32."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(path, "instance mask file missing")
    try:
        array = read_tiff(path)
    except Exception as err:
        raise DatasetError(path, f"cannot read instance mask (corrupt or not a tiff): "
                                 f"{type(err).__name__}: {err}") from None
    array = np.squeeze(array)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
        raise DatasetError(path, f"cannot read instance mask: expected a 2D integer image, got "
                                 f"{array.dtype} of shape {array.shape}")
    return array.astype(np.int32)


# ----------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------

@contextlib.contextmanager
def _atomic_named(path: Path) -> Iterator[Path]:
    """:func:`atomic_write` with a temporary name that keeps ``path``'s ending (writers pick formats by it)."""
    with atomic_write(path) as tmp:
        named = tmp.with_name(tmp.name + file_ending(path))
        try:
            yield named
            os.replace(named, tmp)
        finally:
            if named.exists():
                named.unlink()


def save_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Save ``(H, W)`` (label or grayscale) or ``(3, H, W)`` / ``(H, W, 3)`` RGB uint8 as png."""
    from PIL import Image

    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        if array.min() < 0 or array.max() > 255:
            raise ValueError(f"png data must fit uint8, got range [{array.min()}, {array.max()}]")
        array = array.astype(np.uint8)
    path = Path(path)
    with atomic_write(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")
    return path


def _reference_header(like):
    """The nibabel header of ``like``: a header, a nibabel image, a case (``.header``) or a meta dict."""
    header = like.get("header") if isinstance(like, Mapping) else getattr(like, "header", like)
    if header is None or not hasattr(header, "get_sform"):
        raise ValueError(f"like= must carry a NIfTI header (a case read from NIfTI, a nibabel image or "
                         f"header), got {type(like).__name__}")
    return header


def save_nifti(path: str | os.PathLike, array: np.ndarray, affine: np.ndarray | None = None,
               spacing: Sequence[float] | None = None, dtype=None, like=None) -> Path:
    """Save a 3D array as NIfTI (``.nii.gz`` compressed).

    Args:
        path: the file (``.nii.gz`` or ``.nii``).
        array: the volume, in the stored axis order.
        affine, spacing: geometry of a new file: ``affine``, else
            ``diag(spacing)``, else 1 mm; qform and sform codes 1 (scanner).
        dtype: cast ``array`` first.
        like: a reference image (nibabel header or image, a ``CaseData`` /
            ``LoadedCase`` read from NIfTI, or :func:`read_image_file`'s meta):
            its header is copied, so the affine, qform and sform (matrices and
            codes) and units are the reference's; its intensity scaling is dropped.
    """
    import nibabel as nib

    array = np.asarray(array)
    if dtype is not None:
        array = array.astype(dtype)
    if like is not None:
        if affine is not None or spacing is not None:
            raise ValueError("pass either like= or affine= / spacing=, not both")
        header = _reference_header(like).copy()
        header.set_slope_inter(None, None)
        header["cal_min"], header["cal_max"] = 0, 0
        image = nib.Nifti1Image(array, None, header=header)
    else:
        if affine is None:
            affine = np.diag([*(spacing or (1.0, 1.0, 1.0)), 1.0])
        image = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
        image.set_qform(image.affine, code=1)
        image.set_sform(image.affine, code=1)
    image.set_data_dtype(array.dtype)
    path = Path(path)
    with _atomic_named(path) as tmp:
        nib.save(image, str(tmp))
    return path


def save_tiff(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Save a 2D array (a label map) as an uncompressed TIFF, in its dtype."""
    import tifffile

    path = Path(path)
    with _atomic_named(path) as tmp:
        tifffile.imwrite(str(tmp), np.ascontiguousarray(array))
    return path


def save_image_file(path: str | os.PathLike, array: np.ndarray, like=None) -> Path:
    """Save a label map or image in the format of ``path``'s ending (png, TIFF, or NIfTI ``like`` a reference)."""
    ending = file_ending(path)
    if ending == ".png":
        return save_png(path, array)
    if ending in (".tif", ".tiff"):
        return save_tiff(path, array)
    if ending in (".nii.gz", ".nii"):
        return save_nifti(path, array, like=like)
    raise ValueError(f"{path}: unsupported file type {ending!r} (supported: {list(SUPPORTED_FILE_ENDINGS)})")


def save_instance_mask(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Save a 2D instance mask as an uncompressed TIFF (uint16, or int32 beyond 65535 instances)."""
    from PIL import Image

    array = np.asarray(array)
    if array.min(initial=0) < 0 or array.max(initial=0) >= 2 ** 31:
        raise ValueError(f"instance ids must lie in [0, 2**31), got [{array.min()}, {array.max()}]")
    array = array.astype(np.uint16 if array.max(initial=0) < 2 ** 16 else np.int32)
    path = Path(path)
    with atomic_write(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="TIFF")
    return path


def write_dataset_json(folder: str | os.PathLike, content: Mapping) -> Path:
    """Write ``<folder>/dataset.json`` (indented, keys in the given order)."""
    return atomic_write_text(Path(folder) / "dataset.json", json.dumps(content, indent=4) + "\n")


@contextlib.contextmanager
def staged_dataset_dir(dest_root: str | os.PathLike, name: str, overwrite: bool = False) -> Iterator[Path]:
    """Build a dataset folder in a temporary sibling and rename it into place at the end.

    Yields the temporary folder ``<dest_root>/.<name>.*.partial``; on success it
    becomes ``<dest_root>/<name>`` (an existing one is replaced only with
    ``overwrite``); on any error it is removed, so nothing half-written is left.
    """
    dest_root = Path(dest_root).expanduser()
    final = dest_root / name
    if final.exists() and not overwrite:
        raise DatasetError(final, "already exists; remove it or pass overwrite=True (--overwrite)")
    dest_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=dest_root))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would make a shared dataset unreadable to others
    try:
        yield tmp
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=dest_root))
            os.replace(final, old / name)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
