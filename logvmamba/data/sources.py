"""Real images that ship inside packages: fetch them, without importing the packages, and cache them.

Three sources, each pinned to a version whose files were checked (sha256
below) and read by :mod:`logvmamba.data.convert_real`:

* ``stardist``: the PyPI wheel of stardist 0.9.1 carries a 512 x 512
  fluorescence image of nuclei and its instance mask
  (``stardist/data/images/img2d.tif``, ``mask2d.tif``).
* ``nilearn``: the PyPI wheel of nilearn 0.12.1 carries the ICBM152 2009a
  (symmetric) T1 template and its grey and white matter probability maps
  (``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``;
  no CSF map and no brain mask are in any wheel).
* ``mricron``: the Debian package ``mricron-data`` installs the Colin27 T1
  (``ch2bet.nii.gz``, skull-stripped) and the AAL atlas (``aal.nii.gz``,
  names in ``aal.nii.txt``) under ``/usr/share/mricron/templates``
  (``$MRICRON_TEMPLATES`` overrides). Nothing is downloaded or copied.

:func:`fetch` runs ``python -m pip download --no-deps --only-binary=:all:``
for the wheel, opens it as a zip and extracts only the listed members into
``<cache>/<source>-<version>/`` (in a temporary sibling renamed into place,
so an interrupted fetch leaves nothing), with a ``provenance.json`` naming
the wheel and the sha256 of every file. A second call finds the folder and
runs no pip. The cache is ``$LOGVMAMBA_CACHE``, else
``~/.cache/logvmamba/sources``.

Command::

    python -m logvmamba.data.sources <stardist|nilearn|mricron|all> [--cache DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence

from logvmamba.data.errors import DatasetError
from logvmamba.io import atomic_write_text

__all__ = ["Source", "SOURCES", "default_cache_dir", "mricron_templates_dir", "fetch", "source_file",
           "sha256_file", "provenance", "main"]

logger = logging.getLogger(__name__)

PROVENANCE_FILE = "provenance.json"


@dataclasses.dataclass(frozen=True)
class Source:
    """A package that ships real images, and what is taken from it.

    Attributes:
        key: ``stardist``, ``nilearn`` or ``mricron``.
        package: the PyPI or Debian package name.
        version: the pinned (PyPI) or expected (Debian) version.
        kind: ``"wheel"`` (PyPI, fetched with pip) or ``"debian"`` (installed files).
        files: the files taken, as paths inside the wheel (``kind="wheel"``)
            or names in the templates folder (``kind="debian"``), mapped to
            their expected sha256 (None: recorded, not checked). Checked on
            mricron-data 1.2.20211006+dfsg-4: ch2bet.nii.gz 592a2d20...,
            aal.nii.gz b512dcd3..., aal.nii.txt 1788d655....
        optional: files used when present (Debian), same form.
        origin: where the images come from upstream.
        licence: what the package's own files say about the licences.
    """

    key: str
    package: str
    version: str
    kind: str
    files: Mapping[str, str | None]
    origin: str
    licence: str
    optional: Mapping[str, str | None] = dataclasses.field(default_factory=dict)

    @property
    def folder_name(self) -> str:
        return f"{self.key}-{self.version}"

    def as_record(self) -> dict:
        """A JSON-ready summary (package, version, files, origin, licence)."""
        return {"source": self.key, "package": self.package, "version": self.version, "kind": self.kind,
                "files": sorted({**self.files, **self.optional}), "origin": self.origin, "licence": self.licence}


SOURCES: Mapping[str, Source] = MappingProxyType({
    "stardist": Source(
        key="stardist", package="stardist", version="0.9.1", kind="wheel",
        files={
            "stardist/data/images/img2d.tif": "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750",
            "stardist/data/images/mask2d.tif": "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f",
            "stardist/data/__init__.py": None,            # names the image's origin
            "stardist-0.9.1.dist-info/LICENSE.txt": None,  # the package licence
        },
        origin=("stardist/data/__init__.py (test_image_nuclei_2d): 'Fluorescence microscopy image and mask "
                "from the 2018 kaggle DSB challenge', i.e. the 2018 Data Science Bowl stage1 training set; "
                "Caicedo et al., 'Nucleus segmentation across imaging experiments: the 2018 Data Science "
                "Bowl', Nature Methods 16(12), 2019"),
        licence=("stardist code: BSD-3-Clause (stardist-0.9.1.dist-info/LICENSE.txt, Copyright (c) 2018-2024 "
                 "Uwe Schmidt, Martin Weigert). The wheel states no licence for the image and mask; the DSB "
                 "2018 images are distributed upstream as the Broad Bioimage Benchmark Collection set "
                 "BBBC038 (check its terms there)."),
    ),
    "nilearn": Source(
        key="nilearn", package="nilearn", version="0.12.1", kind="wheel",
        files={
            "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz":
                "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
            "nilearn/datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz":
                "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed",
            "nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz":
                "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db",
            "nilearn/datasets/description/icbm152_2009.rst":
                "ea6b382a052ccda67d1936ddbf63f4c81d0eb013d4f2542bac0ef55a0f899396",
            "nilearn-0.12.1.dist-info/licenses/LICENSE": None,
        },
        origin=("ICBM 152 Nonlinear atlas version 2009a (symmetric), McConnell Brain Imaging Centre, Montreal "
                "Neurological Institute (http://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009; "
                "Fonov et al. 2009, 2011), as converted (uint8, 1 mm) and shipped by nilearn"),
        licence=("nilearn code: BSD-3-Clause (nilearn-0.12.1.dist-info/licenses/LICENSE, Copyright (c) The "
                 "nilearn developers). nilearn/datasets/description/icbm152_2009.rst gives the template's "
                 "licence as 'unknown'; the template is (c) the McConnell Brain Imaging Centre, whose own "
                 "permissive copyright notice (on the BIC page, not in the wheel) applies."),
    ),
    "mricron": Source(
        key="mricron", package="mricron-data", version="1.2.20211006+dfsg-4", kind="debian",
        # recorded, not checked: another Debian or Ubuntu build may recompress the same images
        files={"ch2bet.nii.gz": None, "aal.nii.gz": None},
        optional={"aal.nii.txt": None},
        origin=("Colin27 single-subject T1 template (Holmes et al. 1998), skull-stripped (ch2bet), and the "
                "AAL atlas (Tzourio-Mazoyer et al. 2002, 116 regions) on its 1 mm grid, as distributed with "
                "MRIcron by Chris Rorden (https://github.com/neurolabusc/MRIcron)"),
        licence=("/usr/share/doc/mricron-data/copyright: 'Files: *' Copyright 2006-2010 Chris Rorden, "
                 "BSD-3-clause; the file has no separate stanza for ch2/ch2bet or AAL, so they fall under "
                 "'Files: *'."),
    ),
})


# ----------------------------------------------------------------------------
# locations and hashes
# ----------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """``$LOGVMAMBA_CACHE``, else ``~/.cache/logvmamba/sources``."""
    env = os.environ.get("LOGVMAMBA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "logvmamba" / "sources"


def mricron_templates_dir() -> Path:
    """``$MRICRON_TEMPLATES``, else ``/usr/share/mricron/templates``."""
    return Path(os.environ.get("MRICRON_TEMPLATES", "/usr/share/mricron/templates")).expanduser()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _get(source: str) -> Source:
    try:
        return SOURCES[source]
    except KeyError:
        raise KeyError(f"unknown source {source!r}; known: {', '.join(SOURCES)}") from None


def source_file(folder: str | os.PathLike, member: str) -> Path:
    """A source file in a fetched folder: ``folder/<member>``, else ``folder/<basename>``.

    Raises:
        DatasetError: neither exists.
    """
    folder = Path(folder)
    for candidate in (folder / member, folder / Path(member).name):
        if candidate.is_file():
            return candidate
    raise DatasetError(folder / member, "source file missing (fetch it with `python -m logvmamba.data.sources`)")


def _check_hash(path: Path, expected: str | None) -> str:
    digest = sha256_file(path)
    if expected is not None and digest != expected:
        raise DatasetError(path, f"sha256 {digest} differs from the pinned {expected}; the file is not the "
                                 f"one this converter was checked on")
    return digest


def provenance(source: str, folder: str | os.PathLike) -> dict:
    """Package, version, origin, licence and sha256 of every file of ``source`` in ``folder`` (checked)."""
    src = _get(source)
    folder = Path(folder)
    hashes = {}
    for member, expected in src.files.items():
        hashes[member] = _check_hash(source_file(folder, member), expected)
    for member, expected in src.optional.items():
        try:
            path = source_file(folder, member)
        except DatasetError:
            continue
        hashes[member] = _check_hash(path, expected)
    record = {"package": src.package, "version": src.version, "kind": src.kind}
    stored = folder / PROVENANCE_FILE
    if src.kind == "wheel" and stored.is_file():
        record["wheel"] = json.loads(stored.read_text(encoding="utf-8")).get("wheel")
    if src.kind == "debian":
        record["installed_version"] = _debian_version(src.package)
        record["folder"] = str(folder)
    record.update({"files": hashes, "origin": src.origin, "licence": src.licence})
    return record


def _debian_version(package: str) -> str | None:
    """The installed version of a Debian package (``dpkg-query``), None if unknown."""
    if shutil.which("dpkg-query") is None:
        return None
    result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


# ----------------------------------------------------------------------------
# fetching
# ----------------------------------------------------------------------------

def _cached(src: Source, folder: Path) -> bool:
    return (folder / PROVENANCE_FILE).is_file() and all((folder / m).is_file() for m in src.files)


def _pip_download(src: Source, into: Path, where: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"{src.package}=={src.version}", "-d", str(into)]
    logger.info("sources: %s", " ".join(cmd))
    try:
        result = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as err:
        raise DatasetError(where, f"cannot run pip to download {src.package}=={src.version}: {err}") from None
    wheels = sorted(into.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        tail = " ".join((result.stderr or result.stdout or "").strip().splitlines()[-2:])
        raise DatasetError(where, f"pip download {src.package}=={src.version} failed (is the package index "
                                 f"reachable?): {tail}")
    return wheels[0]


def _extract(src: Source, wheel: Path, into: Path) -> None:
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as err:
        raise DatasetError(wheel, f"not a wheel (zip): {err}") from None
    with archive:
        names = set(archive.namelist())
        for member, expected in src.files.items():
            if member not in names:
                raise DatasetError(wheel, f"has no {member}")
            target = into / member
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as fin, open(target, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            _check_hash(target, expected)


def fetch(source: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the files of ``source``; downloads and extracts the wheel on first use.

    Args:
        source: ``stardist``, ``nilearn`` or ``mricron``.
        cache_dir: the cache (default :func:`default_cache_dir`); unused for ``mricron``.

    Returns:
        ``<cache>/<source>-<version>/`` (wheel members under their paths in
        the wheel), or the mricron templates folder.

    Raises:
        DatasetError: pip failed, the wheel lacks a file, a file's sha256
            differs from the pinned one, or mricron-data is not installed.
    """
    src = _get(source)
    if src.kind == "debian":
        folder = mricron_templates_dir()
        missing = [m for m in src.files if not (folder / m).is_file()]
        if missing:
            raise DatasetError(folder / missing[0], f"missing; install the Debian package with "
                                                    f"`apt-get install mricron-data` (or set MRICRON_TEMPLATES)")
        return folder
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = cache / src.folder_name
    if _cached(src, final):
        logger.info("sources: %s %s cached in %s", src.package, src.version, final)
        return final
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{src.folder_name}.", suffix=".partial", dir=cache))
    try:
        wheel = _pip_download(src, work / "download", final)
        staged = work / src.folder_name
        staged.mkdir()
        _extract(src, wheel, staged)
        record = {"package": src.package, "version": src.version, "wheel": wheel.name,
                  "wheel_sha256": sha256_file(wheel),
                  "files": {m: sha256_file(staged / m) for m in src.files}}
        atomic_write_text(staged / PROVENANCE_FILE, json.dumps(record, indent=4) + "\n")
        if final.exists():  # an incomplete folder from elsewhere: replace it
            shutil.rmtree(final)
        os.replace(staged, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("sources: extracted %d file(s) of %s into %s", len(src.files), wheel.name, final)
    return final


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m logvmamba.data.sources",
                                     description="Fetch the real images shipped in packages into the cache.")
    parser.add_argument("source", choices=[*SOURCES, "all"])
    parser.add_argument("--cache", default=None, help="cache folder (default $LOGVMAMBA_CACHE or "
                                                      "~/.cache/logvmamba/sources)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    keys = list(SOURCES) if args.source == "all" else [args.source]
    status = 0
    for key in keys:
        try:
            print(f"{key}\t{fetch(key, args.cache)}")
        except DatasetError as err:
            print(f"error: {err}", file=sys.stderr)
            status = 2
    return status


if __name__ == "__main__":
    sys.exit(main())
