"""Real images shipped in packages, fetched and converted to nnU-Net raw datasets.

stardist's and nilearn's wheels are downloaded once per session with pip into a
temporary cache; mricron-data is the installed Debian package. Without the
package index (pip fails) or without mricron-data the tests that need them are
skipped with the reason, except under ``CI=true``, where they fail.

Expected values come from the source files read here with tifffile / nibabel
and from hand-written AAL index lists, not from the converters' helpers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from logvmamba.data import RawDataset
from logvmamba.data import sources as sources_module
from logvmamba.data.convert_real import (
    COLIN27_NAME, ICBM152_NAME, STARDIST_NAME, aal_class_lut, convert_icbm152, convert_mricron, convert_stardist,
)
from logvmamba.data.errors import DatasetError
from logvmamba.data.sources import SOURCES, fetch

CI = os.environ.get("CI", "").lower() == "true"
TEMPLATES = Path(os.environ.get("MRICRON_TEMPLATES", "/usr/share/mricron/templates"))
MRICRON_MISSING = [f for f in ("ch2bet.nii.gz", "aal.nii.gz") if not (TEMPLATES / f).is_file()]
MRICRON_REASON = (f"Debian package mricron-data not installed (no {', '.join(MRICRON_MISSING)} in {TEMPLATES}); "
                  f"install it with `apt-get install -y mricron-data`")
ICBM = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"

# AAL1 indices, written out by hand from the AAL table (aal.nii.txt)
AAL_DEEP = [71, 72, 73, 74, 75, 76, 77, 78]                     # caudate, putamen, pallidum, thalamus
AAL_CEREBELLUM = list(range(91, 117))                           # cerebellum 91-108, vermis 109-116
AAL_LEFT = [i for i in range(1, 91, 2) if i not in AAL_DEEP]    # *_L
AAL_RIGHT = [i for i in range(2, 91, 2) if i not in AAL_DEEP]   # *_R


def _unavailable(reason: str):
    if CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sources-cache")


def _fetched(source: str, cache: Path) -> Path:
    try:
        return fetch(source, cache)
    except DatasetError as err:
        _unavailable(f"cannot fetch {source}: {err}")


@pytest.fixture(scope="session")
def stardist_src(cache) -> Path:
    return _fetched("stardist", cache)


@pytest.fixture(scope="session")
def nilearn_src(cache) -> Path:
    return _fetched("nilearn", cache)


@pytest.fixture(scope="session")
def mricron_src() -> Path:
    if MRICRON_MISSING:
        _unavailable(MRICRON_REASON)
    return TEMPLATES


@pytest.fixture(scope="session")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("real-raw")


@pytest.fixture(scope="session")
def stardist_ds(stardist_src, root) -> Path:
    return convert_stardist(stardist_src, root)


@pytest.fixture(scope="session")
def colin_ds(mricron_src, root) -> Path:
    return convert_mricron(mricron_src, root)


@pytest.fixture(scope="session")
def icbm_ds(nilearn_src, root) -> Path:
    return convert_icbm152(nilearn_src, root)


def _json(folder: Path) -> dict:
    return json.loads((folder / "dataset.json").read_text())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------

def test_mricron_data_is_installed():
    """CI must run the mricron tests; elsewhere missing data only skips them."""
    if MRICRON_MISSING:
        _unavailable(MRICRON_REASON)


def test_fetch_extracts_pinned_files(stardist_src, nilearn_src, cache):
    for source, folder in (("stardist", stardist_src), ("nilearn", nilearn_src)):
        src = SOURCES[source]
        assert folder == cache / f"{source}-{src.version}"
        record = json.loads((folder / "provenance.json").read_text())
        assert record["package"] == src.package and record["wheel"].startswith(f"{src.package}-{src.version}-")
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        assert files == sorted([*src.files, "provenance.json"])  # only what is needed
        for member, expected in src.files.items():
            assert record["files"][member] == _sha256(folder / member)
            if expected is not None:
                assert _sha256(folder / member) == expected
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no partial folders left


def test_second_fetch_runs_no_pip(stardist_src, nilearn_src, cache, monkeypatch):
    def no_pip(*args, **kwargs):
        raise AssertionError(f"pip called again: {args}")

    monkeypatch.setattr(sources_module.subprocess, "run", no_pip)
    assert fetch("stardist", cache) == stardist_src
    assert fetch("nilearn", cache) == nilearn_src


def test_sources_cli_prints_cache(stardist_src, cache, capsys):
    assert sources_module.main(["stardist", "--cache", str(cache)]) == 0
    assert capsys.readouterr().out.split() == ["stardist", str(stardist_src)]


def test_missing_mricron_data_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("MRICRON_TEMPLATES", str(tmp_path))
    with pytest.raises(DatasetError, match=r"apt-get install mricron-data"):
        fetch("mricron")
    with pytest.raises(DatasetError, match=r"apt-get install mricron-data"):
        convert_mricron(None, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tampered_source_is_refused(stardist_src, tmp_path):
    copy = tmp_path / "stardist"
    shutil.copytree(stardist_src, copy)
    image = copy / "stardist/data/images/img2d.tif"
    data = bytearray(image.read_bytes())
    data[-1] ^= 1
    image.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="sha256"):
        convert_stardist(copy, tmp_path / "out")
    out = tmp_path / "out"
    assert not (out.exists() and any(out.iterdir()))  # neither the dataset nor its staged folder


# ----------------------------------------------------------------------------
# Dataset951_StardistNuclei
# ----------------------------------------------------------------------------

def _tiles(folder: Path, sub: str, ending: str) -> dict[tuple[int, int], np.ndarray]:
    out = {}
    for path in sorted((folder / sub).iterdir()):
        match = re.fullmatch(rf"nuclei_r(\d)c(\d)(_0000)?{re.escape(ending)}", path.name)
        assert match, path.name
        out[int(match[1]), int(match[2])] = tifffile.imread(str(path))
    return out


def test_stardist_tiles_reassemble(stardist_ds, stardist_src):
    original = tifffile.imread(str(stardist_src / "stardist/data/images/img2d.tif"))
    tiles = _tiles(stardist_ds, "imagesTr", ".tif")
    assert len(tiles) == 16 and original.shape == (512, 512)
    rebuilt = np.zeros_like(original)
    for (r, c), tile in tiles.items():
        assert tile.shape == (128, 128) and tile.dtype == original.dtype
        rebuilt[r * 128:(r + 1) * 128, c * 128:(c + 1) * 128] = tile
    assert np.array_equal(rebuilt, original)


def test_stardist_instances_and_labels(stardist_ds, stardist_src):
    mask = tifffile.imread(str(stardist_src / "stardist/data/images/mask2d.tif"))
    n_original = len(np.unique(mask)) - 1
    assert n_original > 100
    instances = _tiles(stardist_ds, "labelsTr-instance", ".tiff")
    labels = _tiles(stardist_ds, "labelsTr", ".tif")
    total, seen = 0, set()
    for (r, c), inst in instances.items():
        orig = mask[r * 128:(r + 1) * 128, c * 128:(c + 1) * 128]
        k = int(inst.max())
        assert set(np.unique(inst).tolist()) == set(range(k + 1)) - ({0} if orig.all() else set())
        pairs = set(zip(inst[inst > 0].tolist(), orig[orig > 0].tolist()))
        assert np.array_equal(inst > 0, orig > 0)
        assert len(pairs) == k == len({o for _, o in pairs})  # one tile id per original id
        seen |= {o for _, o in pairs}
        total += k
        lab = labels[r, c]
        assert set(np.unique(lab).tolist()) <= {0, 1, 2}
        assert np.array_equal(lab == 0, inst == 0)
        # interior: every 4-neighbour inside the tile has the same instance id
        pad = np.pad(inst, 1, mode="edge")
        same = np.ones(inst.shape, bool)
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            same &= pad[dy:dy + 128, dx:dx + 128] == inst
        assert np.array_equal(lab == 1, (inst > 0) & same)
    assert seen == set(np.unique(mask[mask > 0]).tolist())
    assert total >= n_original  # nuclei cut by a tile border count in each tile
    assert total == sum(r["instances"] for r in _json(stardist_ds)["cases"].values())


def test_stardist_dataset_json_and_validate(stardist_ds, stardist_src):
    content = _json(stardist_ds)
    assert content["file_ending"] == ".tif" and content["channel_names"] == {"0": "fluorescence"}
    assert content["labels"] == {"background": 0, "interior": 1, "boundary": 2}
    assert content["scoring"] == "instances" and content["numTraining"] == 16
    for key in ("name", "description", "reference", "licence"):
        assert content[key]
    prov = content["provenance"]
    assert prov["package"] == "stardist" and prov["version"] == SOURCES["stardist"].version
    assert prov["files"]["stardist/data/images/img2d.tif"] == _sha256(stardist_src / "stardist/data/images/img2d.tif")
    assert not (stardist_ds / "imagesTs").exists() and not (stardist_ds / "splits_final.json").exists()
    ds = RawDataset(stardist_ds)
    assert ds.validate() == 16
    assert all(ds.read_instances(c) is not None for c in ds.case_ids())


def test_convert_cli_fetch_end_to_end(stardist_src, cache, tmp_path):
    env = dict(os.environ, LOGVMAMBA_CACHE=str(cache))
    result = subprocess.run([sys.executable, "-m", "logvmamba.data.convert", "stardist", "fetch", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    folder = Path(result.stdout.strip().splitlines()[-1])
    assert folder == tmp_path / STARDIST_NAME
    assert RawDataset(folder).validate() == 16


# ----------------------------------------------------------------------------
# the 3D datasets
# ----------------------------------------------------------------------------

def _block_mean_by_slices(volume: np.ndarray, start, stop) -> np.ndarray:
    """Mean over 2x2x2 blocks of ``volume[start:stop]``, summed from the 8 strided sub-grids."""
    region = volume[tuple(slice(a, b) for a, b in zip(start, stop))].astype(np.float64)
    total = sum(region[dx::2, dy::2, dz::2] for dx in (0, 1) for dy in (0, 1) for dz in (0, 1))
    return total / 8.0


def _check_geometry(folder: Path, source_file: Path) -> None:
    source = nib.load(str(source_file))
    data = np.asanyarray(source.dataobj)
    content = _json(folder)
    cases = content["cases"]
    assert len(cases) == 8 and content["numTraining"] == 8
    covered = 0
    for case, record in cases.items():
        image = nib.load(str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
        label = nib.load(str(folder / "labelsTr" / f"{case}.nii.gz"))
        start, stop = np.array(record["source_start_voxel"]), np.array(record["source_stop_voxel"])
        assert tuple(image.shape) == tuple((stop - start) // 2) == tuple(record["shape"]) == label.shape
        assert all(30 <= n <= 50 for n in image.shape) if "icbm" in case else (8 <= min(image.shape) <= 12)
        # voxel (0,0,0) of the case is the centre of source voxels start .. start+1
        expected = source.affine @ np.append(start + 0.5, 1.0)
        assert np.allclose(image.affine @ [0, 0, 0, 1], expected, atol=1e-4)
        assert np.allclose(label.affine, image.affine)
        assert np.allclose(image.header.get_zooms()[:3], 2.0 * np.asarray(source.header.get_zooms()[:3]))
        assert np.allclose(np.asanyarray(image.dataobj), _block_mean_by_slices(data, start, stop), atol=1e-4)
        covered += int(np.prod(image.shape))
    box = content["geometry"]["source_box"]
    assert covered == int(np.prod([(b - a) // 2 for a, b in box]))  # the cases tile the box without overlap


@pytest.mark.parametrize("which", ["colin", "icbm"])
def test_3d_cases_affine_and_intensities(which, request):
    if which == "colin":
        folder, source = request.getfixturevalue("colin_ds"), request.getfixturevalue("mricron_src") / "ch2bet.nii.gz"
    else:
        folder, source = request.getfixturevalue("icbm_ds"), request.getfixturevalue("nilearn_src") / ICBM.format("t1")
    _check_geometry(folder, source)
    ds = RawDataset(folder)
    assert ds.validate() == 8
    assert ds.channel_names == ("T1",) and not (folder / "imagesTs").exists()
    assert not (folder / "splits_final.json").exists()
    for case in ds.case_ids():
        assert ds.read_case(case).spacing == pytest.approx((2.0, 2.0, 2.0))


def _class_voxels(folder: Path, n: int) -> np.ndarray:
    counts = np.zeros(n, np.int64)
    for path in sorted((folder / "labelsTr").glob("*.nii.gz")):
        values = np.asanyarray(nib.load(str(path)).dataobj).astype(np.int64)
        assert values.min() >= 0 and values.max() < n
        counts += np.bincount(values.ravel(), minlength=n)
    return counts


def test_aal_merge_follows_the_table(mricron_src):
    lut = aal_class_lut()
    assert [int(lut[i]) for i in (1, 2, 37, 42, 70, 71, 78, 79, 90, 91, 108, 109, 116)] == \
        [1, 1, 1, 1, 1, 3, 3, 1, 1, 2, 2, 2, 2]
    table = mricron_src / "aal.nii.txt"
    if not table.is_file():
        pytest.skip(f"{table} not installed: no AAL names to check")
    names = {int(f[0]): f[1] for f in (line.split() for line in table.read_text().splitlines()) if len(f) >= 2}
    assert sorted(names) == list(range(1, 117))
    for index, name in names.items():
        if index in AAL_LEFT:
            assert name.endswith("_L") and int(lut[index]) == 1, name
        elif index in AAL_RIGHT:
            assert name.endswith("_R") and int(lut[index]) == 1, name
        elif index in AAL_DEEP:
            assert name.split("_")[0] in ("Caudate", "Putamen", "Pallidum", "Thalamus") and lut[index] == 3, name
        else:
            assert name.split("_")[0] in ("Cerebelum", "Vermis") and int(lut[index]) == 2, name


def test_colin27_class_volumes_follow_aal(colin_ds, mricron_src):
    content = _json(colin_ds)
    assert content["labels"] == {"background": 0, "cerebral_cortex": 1, "cerebellum": 2, "deep_grey": 3}
    assert content["aal_merge"] == {"cerebral_cortex": sorted(AAL_LEFT + AAL_RIGHT),
                                    "cerebellum": AAL_CEREBELLUM, "deep_grey": AAL_DEEP}
    counts = _class_voxels(colin_ds, 4)
    assert counts.sum() == sum(int(np.prod(r["shape"])) for r in content["cases"].values())
    atlas = np.asanyarray(nib.load(str(mricron_src / "aal.nii.gz")).dataobj)
    left, right = int(np.isin(atlas, AAL_LEFT).sum()), int(np.isin(atlas, AAL_RIGHT).sum())
    assert abs(left - right) <= 0.2 * max(left, right)  # the two hemispheres that class 1 merges
    for cls, indices in enumerate((AAL_LEFT + AAL_RIGHT, AAL_CEREBELLUM, AAL_DEEP), start=1):
        at_1mm = int(np.isin(atlas, indices).sum())
        assert counts[cls] * 8 == pytest.approx(at_1mm, rel=0.1), cls
    assert counts[3] < counts[2] < counts[1]  # deep nuclei < cerebellum < cerebral cortex


def test_icbm152_tissue_volumes_follow_the_maps(icbm_ds, nilearn_src):
    content = _json(icbm_ds)
    assert content["labels"] == {"background": 0, "grey_matter": 1, "white_matter": 2}
    counts = _class_voxels(icbm_ds, 3)
    gm = np.asanyarray(nib.load(str(nilearn_src / ICBM.format("gm"))).dataobj) / 255.0
    wm = np.asanyarray(nib.load(str(nilearn_src / ICBM.format("wm"))).dataobj) / 255.0
    winner = np.argmax(np.stack([1.0 - gm - wm, gm, wm]), axis=0)
    for cls in (1, 2):
        assert counts[cls] * 8 == pytest.approx(int((winner == cls).sum()), rel=0.1), cls
    # an adult brain's tissue volumes (mm^3), grey matter above white matter
    assert 0.6e6 < counts[1] * 8 < 1.4e6 and 0.4e6 < counts[2] * 8 < 0.9e6 and counts[1] > counts[2]
    assert icbm_ds.name == ICBM152_NAME
    prov = content["provenance"]
    assert prov["version"] == SOURCES["nilearn"].version
    assert prov["files"][ICBM.format("t1")] == _sha256(nilearn_src / ICBM.format("t1"))


def test_grids_that_disagree_are_refused(mricron_src, tmp_path):
    folder = tmp_path / "templates"
    folder.mkdir()
    shutil.copyfile(mricron_src / "ch2bet.nii.gz", folder / "ch2bet.nii.gz")
    aal = nib.load(str(mricron_src / "aal.nii.gz"))
    shifted = aal.affine.copy()
    shifted[0, 3] += 1.0
    nib.save(nib.Nifti1Image(np.asanyarray(aal.dataobj), shifted), str(folder / "aal.nii.gz"))
    with pytest.raises(DatasetError, match="affine differs"):
        convert_mricron(folder, tmp_path / "out")
    assert not (tmp_path / "out" / COLIN27_NAME).exists()
