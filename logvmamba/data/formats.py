"""The file formats of a raw dataset: png, NIfTI and TIFF read and write, dataset.json, staged folders.

Reading goes through Pillow (png), tifffile and MONAI's ``NibabelReader`` and keeps
the stored axis order and bit depth: a png as ``(C, H, W)`` (a 16-bit one through the
decoder here, as Pillow keeps 8 bits of 16-bit colour), a NIfTI volume as
``(1, X, Y, Z)`` (no reorientation, no resampling). Every writer replaces its file atomically
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
import struct
import tempfile
import zlib
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
    "png_bit_depth",
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


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG16_SAMPLES = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel (16 bits allows no palette)
# Adam7 interlacing: (first row, first column, row step, column step) of the seven passes
_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))


def png_bit_depth(path: str | os.PathLike) -> int | None:
    """The bit depth a png's IHDR chunk declares (1, 2, 4, 8 or 16); None if the file does not start as a png."""
    with open(path, "rb") as f:
        head = f.read(25)
    if len(head) < 25 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return head[24]


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, body) of each chunk up to IEND, CRCs checked."""
    pos = 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind, end = data[pos + 4:pos + 8], pos + 8 + length
        if end + 4 > len(data):
            break
        body = data[pos + 8:end]
        if zlib.crc32(kind + body) != struct.unpack_from(">I", data, end)[0]:
            raise ValueError(f"{kind.decode('latin-1')} chunk fails its CRC check")
        yield kind, body
        if kind == b"IEND":
            return
        pos = end + 4
    raise ValueError("truncated: the file ends before its IEND chunk")


def _unfilter(filters: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """Undo the png scanline filters of ``lines`` ``(h, w, bytes per pixel)``, one filter type per row.

    A byte depends on its left, upper and upper-left neighbours only, so the pixels on one
    anti-diagonal (row + column constant) are independent: h + w - 1 vectorised steps,
    where a per-byte loop would take seconds for one large Paeth-filtered image.
    """
    if filters.max(initial=0) > 4:
        raise ValueError(f"unknown scanline filter type {int(filters.max())}")
    h, w, bpp = lines.shape
    recon = np.zeros((h + 1, w + 1, bpp), np.int16)  # a zero row above and column left: the spec's outside bytes
    flat, src = recon.reshape(-1, bpp), lines.reshape(-1, bpp)
    for t in range(h + w - 1):
        y0, y1 = max(0, t - w + 1), min(h - 1, t)
        n = y1 - y0 + 1
        at = y0 * w + w + t + 2  # pixel (y0, t - y0) in recon; along the diagonal the index steps by w

        def diagonal(back: int) -> np.ndarray:
            return flat[at - back:at - back + (n - 1) * w + 1:w]

        a, b, c = diagonal(1), diagonal(w + 1), diagonal(w + 2)  # left, above, upper left
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        predictor = np.choose(filters[y0:y1 + 1, None], (0, a, b, (a + b) >> 1, paeth))
        start = y0 * (w - 1) + t
        diagonal(0)[...] = (src[start:start + (n - 1) * max(w - 1, 1) + 1:max(w - 1, 1)] + predictor) & 255
    return recon[1:, 1:].astype(np.uint8)


def _read_png16(path: Path) -> np.ndarray:
    """A 16-bit png as ``(C, H, W)`` uint16, the samples as stored (Pillow keeps 8 bits of 16-bit colour).

    Decodes as the PNG specification says: chunks with CRCs, zlib, the five scanline filters
    and Adam7 interlacing. Ancillary chunks (gamma, transparency, ...) are not applied, as
    Pillow's arrays do not apply them either.
    """
    data = path.read_bytes()
    if data[:8] != _PNG_SIGNATURE:
        raise ValueError("no png signature")
    header, compressed = None, []
    for kind, body in _png_chunks(data):
        if kind == b"IHDR" and len(body) == 13:
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            compressed.append(body)
        elif kind not in (b"IHDR", b"PLTE", b"IEND") and not kind[0] & 0x20:
            raise ValueError(f"unknown critical chunk {kind.decode('latin-1')}")
    if header is None or not compressed:
        raise ValueError("no IHDR or no IDAT chunk")
    width, height, depth, colour, compression, filter_method, interlace = header
    if depth != 16 or colour not in _PNG16_SAMPLES or compression or filter_method or interlace > 1:
        raise ValueError(f"unsupported png header: bit depth {depth}, colour type {colour}, "
                         f"compression {compression}, filter method {filter_method}, interlace {interlace}")
    channels = _PNG16_SAMPLES[colour]
    bpp = 2 * channels
    passes = []
    for y0, x0, dy, dx in _ADAM7 if interlace else ((0, 0, 1, 1),):
        h, w = max(0, -(-(height - y0) // dy)), max(0, -(-(width - x0) // dx))
        if h and w:  # an empty pass has no scanlines, not even filter bytes
            passes.append((y0, x0, dy, dx, h, w))
    size = sum(h * (1 + w * bpp) for *_, h, w in passes)
    raw = zlib.decompressobj().decompress(b"".join(compressed), size)  # at most what the header announces
    if len(raw) < size:
        raise ValueError(f"truncated image data: {len(raw)} of {size} bytes")
    out = np.empty((height, width, bpp), np.uint8)
    pos = 0
    for y0, x0, dy, dx, h, w in passes:
        rows = np.frombuffer(raw, np.uint8, h * (1 + w * bpp), pos).reshape(h, 1 + w * bpp)
        out[y0::dy, x0::dx] = _unfilter(rows[:, 0], rows[:, 1:].reshape(h, w, bpp))
        pos += rows.size
    samples = out.reshape(height, width * bpp).view(">u2").reshape(height, width, channels)
    return np.moveaxis(samples.astype(np.uint16), -1, 0)


def _zooms_match_affine(nifti) -> bool:
    """Whether a NIfTI header's pixdim equals its affine's column norms (MONAI's reader then reads
    the file as nibabel does; otherwise it rewrites the header first)."""
    dim = int(nifti.header["dim"][0])
    if dim >= 5:
        return True
    zooms = np.asarray(nifti.header.get_zooms())[:dim]
    return bool(np.allclose(zooms, np.sqrt((np.asarray(nifti.affine)[:dim, :dim] ** 2).sum(axis=0))))


def read_image_file(path: str | os.PathLike, kind: str = "image") -> tuple[np.ndarray, dict]:
    """Read one png, TIFF or NIfTI file (Pillow for png, tifffile for TIFF, MONAI's NIfTI reader).

    A 16-bit png is decoded here instead, at full depth (uint16): Pillow reads 16-bit colour
    as 8 bits.

    Returns:
        ``(array, meta)``: a png or 2D TIFF as ``(C, H, W)`` (``C`` = 1 to 4
        as stored, in the stored dtype: uint16 for 16 bits); a NIfTI file as
        ``(1, X, Y, Z)``. ``meta`` holds ``spacing``
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
        if ending == ".png" and png_bit_depth(path) == 16:
            array = _read_png16(path)
            meta = {"spacing": (1.0, 1.0), "affine": None, "header": None}
        elif ending == ".png":
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

            nifti = nib.load(str(path))
            stored_header = nifti.header  # the writer's reference: the header as stored
            if _zooms_match_affine(nifti):
                array, affine = np.asarray(nifti.dataobj), np.array(nifti.affine, dtype=np.float64)
            else:
                # MONAI's reader rectifies the sform / qform of a header whose pixdim disagrees
                # with its affine; such rare files keep its reading (and its import)
                from monai.data import NibabelReader

                reader = NibabelReader()
                array, header = reader.get_data(reader.read(str(path)))
                array, affine = np.asarray(array), np.asarray(header["affine"], dtype=np.float64)
            while array.ndim > 3 and array.shape[-1] == 1:
                array = array[..., 0]
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
    if dest_root.exists() and not dest_root.is_dir():
        raise DatasetError(dest_root, "the destination is a file, not a folder")
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
