"""The file-format layer: one png and one NIfTI writer, atomic, keeping a reference image's geometry."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from logvmamba.data import RawDataset, get_info, load_case
from logvmamba.data.formats import (
    read_image_file,
    save_image_file,
    save_instance_mask,
    save_nifti,
    save_png,
    write_dataset_json,
)


def _reference(tmp_path):
    """A NIfTI whose qform and sform differ, with sform code 4 (MNI) and intensity scaling."""
    affine = np.array([[-1.2, 0, 0, 10], [0, 1.1, 0.1, -5], [0, 0, 3.0, 2], [0, 0, 0, 1]])
    image = nib.Nifti1Image(np.arange(120, dtype=np.int16).reshape(4, 5, 6), affine)
    image.set_qform(np.diag([-1.2, 1.1, 3.0, 1.0]), code=1)
    image.set_sform(affine, code=4)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_slope_inter(2.0, 1.0)
    path = tmp_path / "ref.nii.gz"
    nib.save(image, str(path))
    return path


def test_save_nifti_like_keeps_the_reference_geometry(tmp_path):
    ref = nib.load(str(_reference(tmp_path)))
    _, meta = read_image_file(tmp_path / "ref.nii.gz")
    for like in (ref, ref.header, meta):
        out = save_nifti(tmp_path / "pred.nii.gz", np.ones((4, 5, 6), np.uint8), like=like)
        written = nib.load(str(out))
        q, q_code = written.header.get_qform(coded=True)
        s, s_code = written.header.get_sform(coded=True)
        ref_q, ref_q_code = ref.header.get_qform(coded=True)
        ref_s, ref_s_code = ref.header.get_sform(coded=True)
        assert (int(q_code), int(s_code)) == (int(ref_q_code), int(ref_s_code)) == (1, 4)
        assert np.allclose(q, ref_q) and np.allclose(s, ref_s) and np.allclose(written.affine, ref.affine)
        assert written.header.get_xyzt_units() == ("mm", "sec")
        assert written.get_data_dtype() == np.uint8
        assert np.array_equal(np.asanyarray(written.dataobj), np.ones((4, 5, 6)))  # no scaling applied
    with pytest.raises(ValueError, match="not both"):
        save_nifti(tmp_path / "x.nii.gz", np.ones((4, 5, 6)), affine=np.eye(4), like=ref)
    with pytest.raises(ValueError, match="NIfTI header"):
        save_nifti(tmp_path / "x.nii.gz", np.ones((4, 5, 6)), like={"header": None})


def test_save_nifti_without_reference_writes_scanner_codes(tmp_path):
    out = nib.load(str(save_nifti(tmp_path / "a.nii.gz", np.zeros((3, 4, 5), np.uint8), spacing=(1.5, 1.5, 5.0))))
    assert np.allclose(out.affine, np.diag([1.5, 1.5, 5.0, 1.0]))
    assert int(out.header["qform_code"]) == int(out.header["sform_code"]) == 1


def test_prediction_like_a_loaded_case_keeps_its_geometry(synth_root, tmp_path):
    case = load_case(synth_root / get_info("brats").synthetic_name, "BraTS_00001")
    source = nib.load(str(case.files.images[0]))
    out = save_image_file(tmp_path / "BraTS_00001.nii.gz", case.label.numpy().astype(np.uint8), like=case)
    written = nib.load(str(out))
    assert np.allclose(written.affine, source.affine)
    assert int(written.header["sform_code"]) == int(source.header["sform_code"])
    assert int(written.header["qform_code"]) == int(source.header["qform_code"])
    assert np.array_equal(np.asanyarray(written.dataobj), case.label.numpy())


def test_cases_carry_their_header(synth_root):
    brats = RawDataset(synth_root / get_info("brats").synthetic_name).read_case("BraTS_00001")
    assert brats.header is not None and np.allclose(brats.header.get_best_affine(), brats.affine)
    cell = RawDataset(synth_root / get_info("cell").synthetic_name)
    assert cell.read_case(cell.case_ids()[0]).header is None


def test_save_image_file_picks_the_format_by_ending(tmp_path):
    label = np.arange(12, dtype=np.uint8).reshape(3, 4)
    array, meta = read_image_file(save_image_file(tmp_path / "a.png", label))
    assert np.array_equal(array[0], label) and meta["header"] is None
    with pytest.raises(ValueError, match="unsupported"):
        save_image_file(tmp_path / "a.jpg", label)


def test_writers_replace_files_atomically(tmp_path, monkeypatch):
    from PIL import Image

    path = save_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    before = path.read_bytes()

    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_png(path, np.ones((4, 4), np.uint8))
    with pytest.raises(OSError, match="disk full"):
        save_instance_mask(tmp_path / "b.tiff", np.ones((4, 4), np.int32))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # no temporary file left


def test_nifti_and_dataset_json_leave_no_temporary_files(tmp_path):
    save_nifti(tmp_path / "a.nii.gz", np.zeros((2, 2, 2), np.uint8))
    save_nifti(tmp_path / "a.nii.gz", np.ones((2, 2, 2), np.uint8))
    write_dataset_json(tmp_path, {"name": "x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "dataset.json"]
    assert np.asanyarray(nib.load(str(tmp_path / "a.nii.gz")).dataobj).sum() == 8


# ----------------------------------------------------------------------------
# 16-bit png and TIFF read at full depth. The files are written here, byte by byte from the
# PNG and TIFF specifications (zlib and struct only), never by the reader under test.
# ----------------------------------------------------------------------------

# Adam7: (first row, first column, row step, column step) of the seven passes
_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _filtered_rows(samples: np.ndarray) -> bytes:
    """Scanlines of ``(H, W, C)`` uint16 samples, row y filtered with type y % 5 (None, Sub, Up, Average, Paeth)."""
    h, w, c = samples.shape
    bpp = 2 * c
    x = samples.astype(">u2").view(np.uint8).reshape(h, w * bpp).astype(np.int32)
    b = np.vstack([np.zeros((1, w * bpp), np.int32), x[:-1]])  # the row above; zeros above the first
    a = np.pad(x, ((0, 0), (bpp, 0)))[:, :-bpp]  # the byte one pixel to the left
    c_ = np.pad(b, ((0, 0), (bpp, 0)))[:, :-bpp]
    p = a + b - c_
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c_)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c_))
    predictors = (np.zeros_like(x), a, b, (a + b) // 2, paeth)
    out = bytearray()
    for y in range(h):
        out.append(y % 5)
        out += ((x[y] - predictors[y % 5][y]) % 256).astype(np.uint8).tobytes()
    return bytes(out)


def _png16_bytes(samples: np.ndarray, colour_type: int, interlace: bool = False) -> bytes:
    """A 16-bit png of ``(H, W, C)`` samples (colour type 0 gray, 2 RGB, 4 gray + alpha, 6 RGBA)."""
    import struct
    import zlib

    h, w, _ = samples.shape
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    scanlines = b"".join(_filtered_rows(samples[y0::dy, x0::dx]) for y0, x0, dy, dx in passes
                         if samples[y0::dy, x0::dx].size)
    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, int(interlace))
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(scanlines))
            + _png_chunk(b"IEND", b""))


_PNG16_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}


def _levels(shape, top: int, seed: int = 0) -> np.ndarray:
    """uint16 samples spanning 0..top, both ends included, in a scrambled order."""
    values = np.random.default_rng(seed).integers(0, top + 1, shape).astype(np.uint16)
    values.flat[0], values.flat[-1] = 0, top
    return values


@pytest.mark.parametrize("interlace", [False, True])
@pytest.mark.parametrize("colour_type, top", [(2, 4095), (0, 65535), (6, 65535), (4, 4095)])
def test_16_bit_png_reads_every_level(tmp_path, colour_type, top, interlace):
    from PIL import Image

    samples = _levels((19, 23, _PNG16_CHANNELS[colour_type]), top)  # odd sizes: partial Adam7 blocks
    path = tmp_path / "a_0000.png"
    path.write_bytes(_png16_bytes(samples, colour_type, interlace))
    with Image.open(path) as im:  # an independent decoder checks the writer: Pillow keeps the high bytes
        if colour_type in (0, 2, 6):
            pillow = np.asarray(im)
            assert np.array_equal(pillow, samples[..., 0] if colour_type == 0 else (samples >> 8).astype(np.uint8))
    for kind in ("image", "label"):
        array, meta = read_image_file(path, kind)
        assert array.dtype == np.uint16 and meta["spacing"] == (1.0, 1.0)
        assert np.array_equal(array, np.moveaxis(samples, -1, 0))
    assert len(np.unique(array[0])) > 16


def test_corrupt_16_bit_png_names_the_file(tmp_path):
    from logvmamba.data.errors import DatasetError

    good = _png16_bytes(_levels((8, 8, 3), 4095), 2)
    crc_at = 8 + 8 + 13  # signature, IHDR length and type, IHDR body: the IHDR CRC follows
    cases = {"crc.png": good[:crc_at] + bytes([good[crc_at] ^ 1]) + good[crc_at + 1:],
             "short.png": good[:-30]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DatasetError, match=name):
            read_image_file(tmp_path / name)


def _tiff_bytes(samples: np.ndarray) -> bytes:
    """An uncompressed little-endian baseline TIFF of ``(H, W, C)`` samples (C 1 gray, 3 RGB, 4 RGBA)."""
    import struct

    h, w, c = samples.shape
    pixels = samples.astype(samples.dtype.newbyteorder("<")).tobytes()
    bits = 8 * samples.dtype.itemsize
    extra = 8 + len(pixels)  # BitsPerSample values (c > 1) follow the pixels
    tags = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, c, bits if c == 1 else extra), (259, 3, 1, 1),
            (262, 3, 1, 1 if c == 1 else 2), (273, 4, 1, 8), (277, 3, 1, c), (278, 3, 1, h),
            (279, 4, 1, len(pixels)), (284, 3, 1, 1)]
    if c == 4:
        tags.append((338, 3, 1, 2))  # ExtraSamples: unassociated alpha
    tail = struct.pack(f"<{c}H", *([bits] * c)) if c > 1 else b""
    ifd_at = 8 + len(pixels) + len(tail)
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3 and count == 1
                                                 else struct.pack("<I", value))
        for tag, kind, count, value in tags) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", ifd_at) + pixels + tail + ifd


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("dtype, top", [(np.uint16, 4095), (np.uint16, 65535), (np.uint8, 255)])
def test_tiff_reads_every_level(tmp_path, channels, dtype, top):
    samples = _levels((9, 11, channels), top, seed=channels).astype(dtype)
    path = tmp_path / "a_0000.tif"
    path.write_bytes(_tiff_bytes(samples))
    array, meta = read_image_file(path)
    assert array.dtype == dtype and meta["spacing"] == (1.0, 1.0)
    assert np.array_equal(array, np.moveaxis(samples, -1, 0))


def test_training_input_of_a_16_bit_png_dataset_keeps_its_levels(tmp_path):
    from logvmamba.data.loading import load_case

    folder = tmp_path / "Dataset981_Png16"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    images = {}
    for i in range(2):
        images[i] = _levels((20, 24, 3), 4095, seed=10 + i)
        (folder / "imagesTr" / f"c{i}_0000.png").write_bytes(_png16_bytes(images[i], 2))
        save_png(folder / "labelsTr" / f"c{i}.png", (np.arange(20 * 24).reshape(20, 24) % 2).astype(np.uint8))
    write_dataset_json(folder, {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "x": 1},
                                "numTraining": 2, "file_ending": ".png", "name": "Png16"})
    raw = RawDataset(folder).read_case("c0")
    assert np.array_equal(raw.image, np.moveaxis(images[0], -1, 0).astype(np.float32))
    normalised = load_case(folder, "c0").image
    for c in range(3):  # z-scored per channel: one output level per stored level
        assert len(np.unique(normalised[c].numpy())) == len(np.unique(images[0][..., c])) > 16


def test_endoscopy_conversion_keeps_16_bit_rgb_and_refuses_to_truncate(tmp_path, data_helpers):
    from logvmamba.data.convert import convert_endoscopy
    from logvmamba.data.errors import DatasetError

    source = data_helpers.make_umamba_endovis(tmp_path / "src")
    rgb = _levels((24, 32, 3), 4095, seed=3)
    (source / "imagesTr" / "seq1_frame000_0000.png").write_bytes(_png16_bytes(rgb, 2))
    out = convert_endoscopy(source, tmp_path / "out")
    array, _ = read_image_file(out / "imagesTr" / "seq1_frame000_0000.png")
    assert array.dtype == np.uint16 and np.array_equal(array, np.moveaxis(rgb, -1, 0))

    rgba = _levels((24, 32, 4), 4095, seed=4)
    (source / "imagesTr" / "seq1_frame001_0000.png").write_bytes(_png16_bytes(rgba, 6))
    with pytest.raises(DatasetError, match=r"seq1_frame001_0000\.png.*16-bit png with an alpha channel"):
        convert_endoscopy(source, tmp_path / "out", overwrite=True)
