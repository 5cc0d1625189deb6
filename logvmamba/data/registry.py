"""The four benchmark datasets of the suite: names, shapes, labels and sources.

``DATASETS`` maps the suite's dataset keys (``endoscopy``, ``cell``, ``brats``,
``acdc``) to a frozen :class:`DatasetInfo`. Any other nnU-Net v2 raw dataset is a
*user dataset*: :func:`logvmamba.data.user.user_info` derives its facts from its
dataset.json, and :func:`register_dataset` makes them known to this process under the
key ``DatasetXXX`` (the nnU-Net id; :func:`get_info` and :func:`find_info` see it). Everything else in
:mod:`logvmamba.data` (converters, synthetic generators, loaders, folder
look-up) reads its facts from here, so this table is the single place where a
dataset's nnU-Net name, label map or patch size is written down.

Axis conventions: 2D sizes are ``(H, W)``; 3D sizes are in the array order of
the NIfTI files as nibabel returns them (``(X, Y, Z)``, no reorientation).
"""

from __future__ import annotations

import dataclasses
import re
from types import MappingProxyType
from typing import Mapping, Sequence

__all__ = ["DatasetInfo", "DATASETS", "get_info", "find_info", "register_dataset", "registered", "short_names",
           "user_key"]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Facts about one benchmark dataset.

    Attributes:
        key: the suite's dataset key.
        title: human-readable name of the benchmark.
        nnunet_name: nnU-Net v2 raw folder name of the real data
            (``DatasetXXX_Name``); the converter writes this folder.
        alt_nnunet_names: other accepted real folder names (BraTS 2021).
        spatial_dims: 2 or 3.
        in_channels: number of image channels (an RGB png counts 3).
        num_outputs: number of network output channels.
        output_kind: ``"softmax"`` (class targets, background included in
            ``num_outputs``) or ``"sigmoid"`` (one channel per region).
        channel_names: dataset.json ``channel_names`` values, in order.
        labels: dataset.json ``labels`` (name -> int, or name -> tuple of ints
            for a region), exactly as the real converter writes it.
        regions_class_order: dataset.json ``regions_class_order`` or None.
        class_names: display names of the output channels, in order.
        file_ending: dataset.json ``file_ending``.
        patch_size: training patch of the paper / release recipe.
        normalization: ``"zscore"`` (per image and channel over all voxels) or
            ``"zscore_nonzero"`` (over voxels > 0, background stays 0).
        sampling: training patch sampling, ``"foreground"`` (nnU-Net style,
            one third of patches centred on foreground) or ``"random"``
            (uniform random crop after cropping to the non-zero box).
        split_protocol: ``"kfold"``, ``"brats_holdout"`` or ``"patient_kfold"``
            (see :mod:`logvmamba.data.splits`).
        url: official page of the release (where to register / download).
        download_note: one line on how the data is obtained (a user dataset: the first
            sentence of its dataset.json description).
        synthetic_name: folder name of the synthetic stand-in.
        synthetic_patch_size: training patch for the synthetic stand-in.
        short_title: the name in table headers and figure panels.
        scoring: the scoring protocol of :mod:`logvmamba.evaluation.protocols`
            (``"endovis"``, ``"instances"``, ``"regions"``, ``"classes"``).
        metrics: the table columns of the dataset, in order.
        main_metric: the summary key that is the dataset's main score.
        figure_metric: the score Figure 5 plots (Dice on Cell, as the paper's panel).
        ablation_metrics: the columns of the ablation tables.
        instance_labels: whether the dataset ships instance masks
            (``labelsTr-instance``), which its scoring needs.
        user: a user dataset (not one of the four); its ``patch_size`` is None
            (planned from its fingerprint) and ``normalization`` is ``"nnunet"``
            (per channel name, as nnU-Net v2 normalises).
        target_spacing: a user dataset's planned spacing (array axes), once planned;
            the config's ``resample: true`` trains and predicts at it.
    """

    key: str
    title: str
    nnunet_name: str
    spatial_dims: int
    in_channels: int
    num_outputs: int
    output_kind: str
    channel_names: tuple[str, ...]
    labels: Mapping[str, int | tuple[int, ...]]
    class_names: tuple[str, ...]
    file_ending: str
    patch_size: tuple[int, ...] | None
    normalization: str
    sampling: str
    split_protocol: str
    url: str
    download_note: str
    synthetic_name: str
    synthetic_patch_size: tuple[int, ...] | None
    short_title: str
    scoring: str
    metrics: tuple[str, ...]
    main_metric: str
    figure_metric: str
    ablation_metrics: tuple[str, ...]
    regions_class_order: tuple[int, ...] | None = None
    alt_nnunet_names: tuple[str, ...] = ()
    instance_labels: bool = False
    user: bool = False
    target_spacing: tuple[float, ...] | None = None

    def __hash__(self) -> int:
        return hash(self.key)

    @property
    def nnunet_id(self) -> int:
        """Numeric nnU-Net dataset id of the real data (704, 703, 82, 27)."""
        return int(self.nnunet_name[len("Dataset"):].split("_", 1)[0])

    @property
    def synthetic_id(self) -> int:
        """Numeric nnU-Net dataset id of the synthetic stand-in."""
        return int(self.synthetic_name[len("Dataset"):].split("_", 1)[0])

    @property
    def all_names(self) -> tuple[str, ...]:
        """Every folder name that belongs to this dataset, real first."""
        return (self.nnunet_name, *self.alt_nnunet_names, self.synthetic_name)

    def dataset_json(self, **extra) -> dict:
        """The dataset.json content the converter writes (``extra`` keys added)."""
        out = {
            "channel_names": {str(i): n for i, n in enumerate(self.channel_names)},
            "labels": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.labels.items()},
        }
        if self.regions_class_order is not None:
            out["regions_class_order"] = list(self.regions_class_order)
        out["file_ending"] = self.file_ending
        out.update(extra)
        return out


_BRATS_LABELS = {
    "background": 0,
    "whole tumor": (1, 2, 3),
    "tumor core": (2, 3),
    "enhancing tumor": (3,),
}

DATASETS: Mapping[str, DatasetInfo] = MappingProxyType({
    "endoscopy": DatasetInfo(
        key="endoscopy",
        short_title="Endoscopy",
        scoring="endovis",
        metrics=("DSC", "NSD"),
        main_metric="DSC",
        figure_metric="DSC",
        ablation_metrics=("DSC", "NSD"),
        title="MICCAI EndoVis 2017 Robotic Instrument Segmentation",
        nnunet_name="Dataset704_Endovis17",
        spatial_dims=2,
        in_channels=3,
        num_outputs=8,
        output_kind="softmax",
        channel_names=("R", "G", "B"),
        labels=MappingProxyType({
            "background": 0,
            "Bipolar Forceps": 1,
            "Prograsp Forceps": 2,
            "Large Needle Driver": 3,
            "Vessel Sealer": 4,
            "Grasping Retractor": 5,
            "Monopolar Curved Scissors": 6,
            "Ultrasound Probe": 7,
        }),
        class_names=("background", "Bipolar Forceps", "Prograsp Forceps", "Large Needle Driver",
                     "Vessel Sealer", "Grasping Retractor", "Monopolar Curved Scissors",
                     "Ultrasound Probe"),
        file_ending=".png",
        patch_size=(384, 640),
        normalization="zscore",
        sampling="foreground",
        split_protocol="kfold",
        url="https://endovissub2017-roboticinstrumentsegmentation.grand-challenge.org/",
        download_note=("register on the EndoVis 2017 challenge page; the suite converts the "
                       "nnU-Net package of U-Mamba (Dataset704_Endovis17, linked from "
                       "https://github.com/bowang-lab/U-Mamba)"),
        synthetic_name="Dataset904_SynthEndoscopy",
        synthetic_patch_size=(64, 96),
    ),
    "cell": DatasetInfo(
        key="cell",
        short_title="Cell",
        scoring="instances",
        metrics=("F1", "DSC"),
        main_metric="F1",
        figure_metric="DSC",
        ablation_metrics=("F1", "DSC"),
        instance_labels=True,
        title="NeurIPS 2022 Cell Segmentation Challenge",
        nnunet_name="Dataset703_NeurIPSCell",
        spatial_dims=2,
        in_channels=3,
        num_outputs=3,
        output_kind="softmax",
        channel_names=("R", "G", "B"),
        labels=MappingProxyType({"background": 0, "interior": 1, "boundary": 2}),
        class_names=("background", "interior", "boundary"),
        file_ending=".png",
        patch_size=(512, 512),
        normalization="zscore",
        sampling="foreground",
        split_protocol="kfold",
        url="https://neurips22-cellseg.grand-challenge.org/",
        download_note=("register on the NeurIPS 2022 CellSeg challenge page; the suite converts "
                       "the nnU-Net package of U-Mamba (Dataset703_NeurIPSCell, linked from "
                       "https://github.com/bowang-lab/U-Mamba)"),
        synthetic_name="Dataset903_SynthCell",
        synthetic_patch_size=(64, 64),
    ),
    "brats": DatasetInfo(
        key="brats",
        short_title="BraTS",
        scoring="regions",
        metrics=("Dice_WT", "Dice_TC", "Dice_ET", "Dice_mean", "HD95_WT", "HD95_TC", "HD95_ET", "HD95_mean"),
        main_metric="Dice_mean",
        figure_metric="Dice_mean",
        ablation_metrics=("Dice_mean", "HD95_mean"),
        title="BraTS 2020 brain tumour segmentation (BraTS 2021 also accepted)",
        nnunet_name="Dataset082_BraTS2020",
        alt_nnunet_names=("Dataset137_BraTS2021",),
        spatial_dims=3,
        in_channels=4,
        num_outputs=3,
        output_kind="sigmoid",
        channel_names=("T1", "T1ce", "T2", "Flair"),
        labels=MappingProxyType(_BRATS_LABELS),
        regions_class_order=(1, 2, 3),
        class_names=("whole tumor", "tumor core", "enhancing tumor"),
        file_ending=".nii.gz",
        patch_size=(128, 128, 128),
        normalization="zscore_nonzero",
        sampling="random",
        split_protocol="brats_holdout",
        url="https://www.med.upenn.edu/cbica/brats2020/data.html",
        download_note=("BraTS 2020: request access on the CBICA BraTS 2020 data page; BraTS 2021: "
                       "register on Synapse, https://www.synapse.org/#!Synapse:syn25829067/wiki/610863"),
        synthetic_name="Dataset982_SynthBraTS",
        synthetic_patch_size=(32, 32, 32),
    ),
    "acdc": DatasetInfo(
        key="acdc",
        short_title="ACDC",
        scoring="classes",
        metrics=("Dice_RV", "Dice_MYO", "Dice_LV", "Dice_mean", "HD95_RV", "HD95_MYO", "HD95_LV", "HD95_mean"),
        main_metric="Dice_mean",
        figure_metric="Dice_mean",
        ablation_metrics=("Dice_mean", "HD95_mean"),
        title="ACDC Automated Cardiac Diagnosis Challenge (cine MRI)",
        nnunet_name="Dataset027_ACDC",
        spatial_dims=3,
        in_channels=1,
        num_outputs=4,
        output_kind="softmax",
        channel_names=("cineMRI",),
        labels=MappingProxyType({"background": 0, "RV": 1, "MLV": 2, "LVC": 3}),
        class_names=("background", "RV", "MYO", "LV"),
        file_ending=".nii.gz",
        patch_size=(160, 160, 16),
        normalization="zscore",
        sampling="foreground",
        split_protocol="patient_kfold",
        url="https://acdc.creatis.insa-lyon.fr/",
        download_note=("register on the ACDC challenge site (the data is now distributed through "
                       "the CREATIS Human Heart Project database)"),
        synthetic_name="Dataset927_SynthACDC",
        synthetic_patch_size=(64, 64, 16),
    ),
})


# User datasets known to this process (key -> info), see register_dataset.
_REGISTERED: dict[str, DatasetInfo] = {}

_NNUNET_NAME = re.compile(r"Dataset(\d{3})_\w+")


def user_key(folder_name: str) -> str:
    """The suite's key of a user dataset folder: ``Dataset951_StardistNuclei`` -> ``Dataset951``.

    The key has no underscore (table columns are ``<dataset>_<metric>``) and is unique
    among datasets of one nnU-Net root, as nnU-Net ids are.

    Raises:
        ValueError: not an nnU-Net v2 dataset folder name.
    """
    match = _NNUNET_NAME.fullmatch(folder_name)
    if match is None:
        raise ValueError(f"{folder_name!r} is not an nnU-Net v2 dataset folder name (DatasetXXX_Name, three digits)")
    return f"Dataset{match.group(1)}"


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Make a user dataset's info known to :func:`get_info` / :func:`find_info` in this process.

    A later registration under the same key replaces the earlier one (the dataset.json
    of the folder opened last decides).

    Raises:
        ValueError: the key is one of the four.
    """
    if info.key in DATASETS:
        raise ValueError(f"{info.key!r} is one of the suite's datasets; a user dataset needs another key")
    _REGISTERED[info.key] = info
    return info


def registered() -> Mapping[str, DatasetInfo]:
    """The four datasets and every registered user dataset, by key."""
    return MappingProxyType({**DATASETS, **_REGISTERED})


def get_info(key: str) -> DatasetInfo:
    """Return the :class:`DatasetInfo` of a dataset key (the four, or a registered user dataset).

    Raises:
        KeyError: unknown key; the message lists the known keys.
    """
    try:
        return registered()[key]
    except KeyError:
        raise KeyError(f"unknown dataset {key!r}; known: {', '.join(registered())}") from None


def find_info(name: str | None) -> DatasetInfo | None:
    """The dataset a folder name belongs to (real or synthetic), else None.

    Accepts a key (``"brats"``), a folder name (``"Dataset137_BraTS2021"``), or
    a path whose last part is a folder name.
    """
    if not name:
        return None
    name = str(name).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    known = registered()
    if name in known:
        return known[name]
    for info in known.values():
        if name in info.all_names:
            return info
    return None


def _short(name: str) -> str:
    words = name.split()
    return "".join(w[0] for w in words).upper() if len(words) > 1 else name


def short_names(names: Sequence[str]) -> list[str]:
    """Metric-column names of classes: ``"whole tumor"`` -> ``"WT"``, one word unchanged.

    When two initials collide (``"left cortex"``, ``"lateral cortex"``), every name is
    written out instead, spaces and other non-word characters as ``-``.
    """
    short = [_short(str(n)) for n in names]
    if len(set(short)) == len(short) and all(re.fullmatch(r"[\w-]+", s) for s in short):
        return short
    return [re.sub(r"[^0-9A-Za-z]+", "-", str(n)).strip("-") for n in names]
