"""nnU-Net v2 raw datasets: find, open, validate and read them.

The on-disk format (nnU-Net v2 "raw")::

    <root>/DatasetXXX_Name/dataset.json
    <root>/DatasetXXX_Name/imagesTr/<case>_<CCCC><ext>   CCCC = 4-digit channel index
    <root>/DatasetXXX_Name/labelsTr/<case><ext>
    <root>/DatasetXXX_Name/imagesTs/, labelsTs/          optional test subset
    <root>/DatasetXXX_Name/labels{Tr,Ts}-instance/<case>.tiff
                                                         optional instance masks (cell)
    <root>/DatasetXXX_Name/splits_final.json             optional, see splits.py

``<ext>`` is dataset.json's ``file_ending``: ``.png`` (2D; an RGB png holds
three channels in its one ``_0000`` file) or ``.nii.gz`` / ``.nii`` (3D, one
channel per file). The files themselves are read and written by
:mod:`logvmamba.data.formats`.

Every problem is a :class:`~logvmamba.data.errors.DatasetError` whose one-line
message starts with the file at fault.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from logvmamba.data.errors import DatasetError
from logvmamba.data.formats import (
    INSTANCE_SUFFIX, SUPPORTED_FILE_ENDINGS, channel_files, read_image_file, read_instance_file,
)
from logvmamba.data.registry import DATASETS, DatasetInfo, find_info, register_dataset

__all__ = [
    "SUBSETS",
    "CaseFiles",
    "CaseData",
    "RawDataset",
    "open_dataset",
    "resolve_dataset_dir",
    "missing_dataset_error",
    "load_dataset_json",
    "check_finite",
]

SUBSETS = ("Tr", "Ts")
USER_FOLDER = re.compile(r"Dataset\d{3}_\w+")  # a folder that becomes a user dataset


# ----------------------------------------------------------------------------
# locating a dataset folder
# ----------------------------------------------------------------------------

def missing_dataset_error(path: str | os.PathLike, info: DatasetInfo | None = None) -> DatasetError:
    """The error for a dataset folder that does not exist (with where to get it)."""
    path = Path(path)
    info = info or find_info(path.name)
    msg = "dataset folder not found"
    if info is not None and path.name == info.synthetic_name:
        msg += (f"; generate the synthetic stand-in with "
                f"`python -m logvmamba.data.synthetic {info.key} {path.parent}`")
    elif info is not None:
        msg += (f"; {info.title} is obtained from {info.url} ({info.download_note}); then run "
                f"`python -m logvmamba.data.convert {info.key} <download> {path.parent}` "
                f"(see docs/datasets.md)")
    return DatasetError(path, msg)


def resolve_dataset_dir(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None,
                        synthetic: bool = False) -> Path:
    """Find a dataset folder.

    Args:
        name_or_path: a path to a dataset folder; or a folder name
            (``"Dataset704_Endovis17"``), an nnU-Net id (``"704"``,
            ``"Dataset704"``) or a dataset key (``"endoscopy"``), looked up
            under ``root``.
        root: folder holding ``DatasetXXX_Name`` folders (the config's data
            root). When None, the ``nnUNet_raw`` environment variable is used
            if set; it is never required when a path or root is given.
        synthetic: with a dataset key, look for its synthetic stand-in.

    Returns:
        The dataset folder (it exists and holds a dataset.json-bearing layout
        only as far as a directory check goes; open it with :class:`RawDataset`).

    Raises:
        DatasetError: no such folder; the message names the path looked at and,
            for the suite's datasets, the URL where the data is obtained.
    """
    text = os.fspath(name_or_path)
    candidate = Path(text).expanduser()
    looks_like_path = candidate.is_absolute() or os.sep in text or "/" in text or text.startswith(".")
    if looks_like_path or (text not in DATASETS and candidate.is_dir()):
        if candidate.is_dir():
            return candidate
        raise missing_dataset_error(candidate)

    if root is None:
        root = os.environ.get("nnUNet_raw")
    if root is None:
        info = find_info(text)
        where = f" ({info.title}: {info.url})" if info is not None else ""
        raise DatasetError(text, "not a folder, and no dataset root to look in: pass root= (the "
                                 f"config's data root) or set the nnUNet_raw environment variable{where}")
    root = Path(root).expanduser()

    names: list[str]
    info = DATASETS.get(text)
    if info is not None:
        names = [info.synthetic_name] if synthetic else [info.nnunet_name, *info.alt_nnunet_names]
    else:
        match = re.fullmatch(r"(?:Dataset)?(\d{1,3})", text)
        if match:
            prefix = f"Dataset{int(match.group(1)):03d}_"
            names = sorted(p.name for p in root.glob(prefix + "*") if p.is_dir()) or [prefix + "*"]
        else:
            names = [text]
    for name in names:
        if (root / name).is_dir():
            return root / name
    info = info or find_info(names[0])
    raise missing_dataset_error(root / names[0], info)


def open_dataset(dataset: RawDataset | str | os.PathLike, root: str | os.PathLike | None = None) -> RawDataset:
    """A :class:`RawDataset` from a dataset, a folder, or a name looked up under ``root``."""
    if isinstance(dataset, RawDataset):
        return dataset
    return RawDataset(resolve_dataset_dir(dataset, root))


# ----------------------------------------------------------------------------
# dataset.json
# ----------------------------------------------------------------------------

def load_dataset_json(folder: str | os.PathLike) -> dict:
    """Read and check ``<folder>/dataset.json``; returns the parsed dict.

    Checks: valid JSON object; ``channel_names`` a non-empty mapping with keys
    "0".."C-1"; ``labels`` a mapping with an integer label 0, non-negative
    integer labels (regions: lists of positive ints, then
    ``regions_class_order`` is required); ``file_ending`` one of
    :data:`SUPPORTED_FILE_ENDINGS`; ``numTraining`` (when present) an int.
    """
    path = Path(folder) / "dataset.json"
    if not path.is_file():
        raise DatasetError(path, "missing; every nnU-Net raw dataset folder needs a dataset.json")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(path, f"malformed JSON ({err})") from None
    if not isinstance(content, dict):
        raise DatasetError(path, "malformed: the top level must be a JSON object")

    channels = content.get("channel_names", content.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise DatasetError(path, "malformed: 'channel_names' must be a non-empty object like {\"0\": \"T1\"}")
    if sorted(channels, key=lambda k: (len(k), k)) != [str(i) for i in range(len(channels))]:
        raise DatasetError(path, f"malformed: 'channel_names' keys must be \"0\"..\"{len(channels) - 1}\", "
                                 f"got {sorted(channels)}")

    labels = content.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DatasetError(path, "malformed: 'labels' must be a non-empty object like {\"background\": 0}")
    seen: dict[int, str] = {}
    has_regions = False
    for name, value in labels.items():
        if isinstance(value, list) or isinstance(value, tuple):
            has_regions = True
            if not value or not all(_is_int(v) and v > 0 for v in value):
                raise DatasetError(path, f"malformed: region label {name!r} must be a list of positive ints, "
                                         f"got {value!r}")
            continue
        if not _is_int(value) or value < 0:
            raise DatasetError(path, f"malformed: label {name!r} must be a non-negative int, got {value!r}")
        if value in seen:
            raise DatasetError(path, f"malformed: labels {seen[value]!r} and {name!r} share the value {value}")
        seen[value] = name
    if 0 not in seen:
        raise DatasetError(path, "malformed: 'labels' needs a background label with value 0")
    if has_regions:
        order = content.get("regions_class_order")
        n_regions = sum(isinstance(v, (list, tuple)) for v in labels.values())
        if not isinstance(order, list) or len(order) != n_regions or not all(_is_int(v) for v in order):
            raise DatasetError(path, f"malformed: region labels need 'regions_class_order', a list of "
                                     f"{n_regions} ints")

    ending = content.get("file_ending")
    if ending not in SUPPORTED_FILE_ENDINGS:
        raise DatasetError(path, f"malformed: 'file_ending' must be one of {list(SUPPORTED_FILE_ENDINGS)}, "
                                 f"got {ending!r}")
    if "numTraining" in content and not _is_int(content["numTraining"]):
        raise DatasetError(path, f"malformed: 'numTraining' must be an int, got {content['numTraining']!r}")
    return content


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ----------------------------------------------------------------------------
# the reader
# ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CaseFiles:
    """The files of one case.

    Attributes:
        case_id: case identifier (file names without ``_CCCC`` and ending).
        subset: ``"Tr"`` or ``"Ts"``.
        images: channel files in channel order.
        label: label file, or None (test cases without labels).
        instances: instance mask file, or None.
    """

    case_id: str
    subset: str
    images: tuple[Path, ...]
    label: Path | None
    instances: Path | None = None


@dataclasses.dataclass
class CaseData:
    """One case read from disk (not normalised).

    Attributes:
        case_id: case identifier.
        image: ``(C, *spatial)`` float32, intensities as stored.
        label: ``spatial`` int16 label map as stored, or None.
        spacing: voxel size per spatial axis (1.0 for png).
        affine: NIfTI affine (4x4) or None for png.
        files: where it came from.
        header: the nibabel header of the first channel file (None for png),
            the reference of :func:`~logvmamba.data.formats.save_nifti`'s ``like``.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    spacing: tuple[float, ...]
    affine: np.ndarray | None
    files: CaseFiles
    header: object | None = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])


def check_finite(case: CaseData) -> None:
    """Raise :class:`DatasetError` naming the file, case and channel of the first NaN or inf voxels.

    Found here, such a case is one clear line rather than a "loss is nan" epochs into training.
    """
    for c in range(case.image.shape[0]):
        bad = int(np.count_nonzero(~np.isfinite(case.image[c])))
        if bad:
            images = case.files.images  # an RGB png holds its three channels in one file
            file = images[c] if len(images) == case.image.shape[0] else images[0]
            raise DatasetError(file, f"image holds NaN or infinite values in {bad} voxel(s) of "
                                     f"{case.image[c].size} (case {case.case_id!r}, channel {c}); "
                                     f"replace them (e.g. with 0) before training")


class RawDataset:
    """An nnU-Net v2 raw dataset folder, validated as it is read.

    Opening checks the folder and dataset.json; listing cases checks that
    every case has all its channel files and (training cases) its label;
    reading a case checks channel counts, shapes and label values.

    Args:
        path: the ``DatasetXXX_Name`` folder.

    Raises:
        DatasetError: see the checks above; messages name the file at fault.

    Examples::

        >>> ds = RawDataset("/data/nnUNet_raw/Dataset704_Endovis17")  # doctest: +SKIP
        >>> case = ds.read_case(ds.case_ids()[0])                     # doctest: +SKIP
        >>> case.image.shape, case.label.shape                        # doctest: +SKIP
        ((3, 1024, 1280), (1024, 1280))
    """

    def __init__(self, path: str | os.PathLike):
        path = Path(path).expanduser()
        if not path.is_dir():
            raise missing_dataset_error(path)
        self.path = path
        self.json = load_dataset_json(path)
        self.info: DatasetInfo | None = find_info(self.json.get("name")) or find_info(path.name)
        if (self.info is None or self.info.user) and USER_FOLDER.fullmatch(path.name):
            from logvmamba.data.user import user_info

            try:
                fresh = user_info(path, self.json)
            except ValueError as err:
                raise DatasetError(path / "dataset.json", str(err)) from None
            # keep a registration that only adds the planned patch to these facts
            known = self.info
            if known is None or dataclasses.replace(known, patch_size=None, synthetic_patch_size=None) != fresh:
                self.info = register_dataset(fresh)
        self._cases: dict[str, list[CaseFiles]] = {}
        if not (path / "imagesTr").is_dir():
            raise DatasetError(path / "imagesTr", "missing; a raw dataset keeps its training images in imagesTr/")

    def __repr__(self) -> str:
        return f"RawDataset({str(self.path)!r})"

    # -- properties from dataset.json ------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.json.get("name", self.path.name))

    @property
    def key(self) -> str | None:
        """The suite's dataset key (``"brats"``...) or None for another dataset."""
        return None if self.info is None else self.info.key

    @property
    def file_ending(self) -> str:
        return self.json["file_ending"]

    @property
    def channel_names(self) -> tuple[str, ...]:
        channels = self.json.get("channel_names", self.json.get("modality"))
        return tuple(str(channels[str(i)]) for i in range(len(channels)))

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def spatial_dims(self) -> int:
        return 2 if self.file_ending in (".png", ".tif", ".tiff") else 3

    @property
    def labels(self) -> dict:
        return dict(self.json["labels"])

    @property
    def has_regions(self) -> bool:
        return any(isinstance(v, (list, tuple)) for v in self.labels.values())

    @property
    def regions(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """Region labels ``(name, member label values)`` in dataset.json order (empty if none)."""
        return tuple((k, tuple(int(x) for x in v)) for k, v in self.labels.items()
                     if isinstance(v, (list, tuple)))

    @property
    def label_values(self) -> tuple[int, ...]:
        """Every label value allowed in a label file, sorted."""
        values = {0}
        for v in self.labels.values():
            values.update(v if isinstance(v, (list, tuple)) else [v])
        return tuple(sorted(int(v) for v in values))

    @property
    def num_classes(self) -> int:
        """Network outputs: number of regions, or number of integer labels (background included)."""
        if self.has_regions:
            return len(self.regions)
        return len(self.label_values)

    @property
    def is_synthetic(self) -> bool:
        return bool(self.json.get("synthetic", False))

    # -- cases -------------------------------------------------------------------------
    def cases(self, subset: str = "Tr") -> list[CaseFiles]:
        """All cases of a subset (``"Tr"`` or ``"Ts"``), sorted by case id.

        A missing ``imagesTs`` folder means an empty test subset.
        """
        if subset not in SUBSETS:
            raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
        if subset not in self._cases:
            self._cases[subset] = self._index(subset)
        return list(self._cases[subset])

    def case_ids(self, subset: str = "Tr") -> list[str]:
        return [c.case_id for c in self.cases(subset)]

    def get(self, case_id: str, subset: str | None = None) -> CaseFiles:
        """The files of a case (looked up in ``subset``, else Tr then Ts)."""
        for sub in ([subset] if subset else SUBSETS):
            for case in self.cases(sub):
                if case.case_id == case_id:
                    return case
        raise KeyError(f"{self.path}: no case {case_id!r} in images{subset or 'Tr/Ts'}")

    def _index(self, subset: str) -> list[CaseFiles]:
        image_dir = self.path / f"images{subset}"
        label_dir = self.path / f"labels{subset}"
        instance_dir = self.path / f"labels{subset}-instance"
        if not image_dir.is_dir():
            return []
        ending = self.file_ending
        channels = channel_files(image_dir, ending)
        labels = {}
        if label_dir.is_dir():
            labels = {f.name[: -len(ending)]: f for f in sorted(label_dir.iterdir())
                      if f.name.endswith(ending) and not f.name.startswith(".")}

        cases = []
        n_expected = self.num_channels
        for case_id in sorted(channels):
            files = channels[case_id]
            top = max(files)
            n_needed = n_expected if ending != ".png" else top + 1
            for c in range(max(n_needed, top + 1)):
                if c not in files:
                    raise DatasetError(image_dir / f"{case_id}_{c:04d}{ending}",
                                       f"channel file missing for case {case_id!r} "
                                       f"(dataset.json lists {n_expected} channel(s); found "
                                       f"{', '.join(files[k].name for k in sorted(files))})")
            if ending != ".png" and top + 1 > n_expected:
                raise DatasetError(files[top], f"unexpected channel file: dataset.json lists only "
                                               f"{n_expected} channel(s)")
            label = labels.get(case_id)
            if label is None and subset == "Tr":
                raise DatasetError(label_dir / f"{case_id}{ending}",
                                   f"label file missing for training case {case_id!r}")
            instances = instance_dir / f"{case_id}{INSTANCE_SUFFIX}"
            cases.append(CaseFiles(case_id, subset, tuple(files[c] for c in sorted(files)), label,
                                   instances if instances.is_file() else None))
        for case_id, label in labels.items():
            if case_id not in channels:
                raise DatasetError(image_dir / f"{case_id}_0000{ending}",
                                   f"channel file missing: label {label.name} has no image")
        if subset == "Tr" and _is_int(self.json.get("numTraining")) and self.json["numTraining"] != len(cases):
            raise DatasetError(self.path / "dataset.json",
                               f"numTraining is {self.json['numTraining']} but imagesTr holds {len(cases)} "
                               f"case(s); the copy is incomplete or dataset.json is stale")
        return cases

    # -- reading -------------------------------------------------------------------------
    def read_case(self, case: str | CaseFiles, subset: str | None = None, with_label: bool = True) -> CaseData:
        """Read and check one case.

        Args:
            case: a case id or :class:`CaseFiles`.
            subset: where to look the case id up (default: Tr, then Ts).
            with_label: read the label file too (when the case has one).

        Raises:
            DatasetError: corrupt file, channel count, shape or label value mismatch.
        """
        files = case if isinstance(case, CaseFiles) else self.get(case, subset)
        arrays, meta0 = [], None
        for file in files.images:
            array, meta = read_image_file(file, "image")
            if self.file_ending == ".png" and array.shape[0] == 4:
                raise DatasetError(file, "RGBA png: the image channels must be RGB or grayscale")
            if meta0 is not None and array.shape[1:] != arrays[0].shape[1:]:
                raise DatasetError(file, f"image shape {array.shape[1:]} differs from "
                                         f"{files.images[0].name} {arrays[0].shape[1:]}")
            meta0 = meta0 or meta
            arrays.append(array)
        image = np.concatenate(arrays, axis=0).astype(np.float32, copy=False)
        if image.shape[0] != self.num_channels:
            raise DatasetError(files.images[-1],
                               f"case {files.case_id!r} has {image.shape[0]} channel(s) in "
                               f"{[f.name for f in files.images]}, dataset.json lists {self.num_channels}")
        label = None
        if with_label and files.label is not None:
            label = self._read_label(files.label, image.shape[1:])
        return CaseData(files.case_id, image, label, tuple(meta0["spacing"]), meta0["affine"], files,
                        meta0["header"])

    def _read_label(self, path: Path, shape: Sequence[int]) -> np.ndarray:
        array, _ = read_image_file(path, "label")
        if array.shape[0] != 1:
            raise DatasetError(path, f"label must be a single-channel image, got {array.shape[0]} channels")
        array = array[0]
        if tuple(array.shape) != tuple(shape):
            raise DatasetError(path, f"label shape {tuple(array.shape)} does not match image shape {tuple(shape)}")
        if not np.issubdtype(array.dtype, np.integer):
            rounded = np.rint(array)
            if not np.array_equal(rounded, array):
                raise DatasetError(path, "label holds non-integer values")
            array = rounded
        present = np.unique(array)
        bad = sorted(set(int(v) for v in present) - set(self.label_values))
        if bad:
            shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if len(bad) > 10 else "")
            raise DatasetError(path, f"label values [{shown}] are not in dataset.json labels "
                                     f"(allowed {list(self.label_values)})")
        return array.astype(np.int16)

    def read_instances(self, case: str | CaseFiles, subset: str | None = None) -> np.ndarray | None:
        """The instance mask of a case (``int32``, 0 background), or None if it has none."""
        files = case if isinstance(case, CaseFiles) else self.get(case, subset)
        if files.instances is None:
            return None
        return read_instance_file(files.instances)

    def __iter__(self) -> Iterator[CaseData]:
        for files in self.cases("Tr"):
            yield self.read_case(files)

    def validate(self, subsets: Sequence[str] = SUBSETS) -> int:
        """Read every case (and instance mask) of the subsets, images checked finite; returns the number read."""
        n = 0
        for subset in subsets:
            for files in self.cases(subset):
                data = self.read_case(files)
                check_finite(data)
                if files.instances is not None:
                    inst = read_instance_file(files.instances)
                    if inst.shape != data.spatial_shape:
                        raise DatasetError(files.instances, f"instance mask shape {inst.shape} does not "
                                                            f"match image shape {data.spatial_shape}")
                n += 1
        return n
