"""User datasets: the facts of any nnU-Net v2 raw dataset, read from its dataset.json.

A folder ``DatasetXXX_Name`` that is not one of the four benchmark datasets gets a
:class:`~logvmamba.data.registry.DatasetInfo` with the key ``DatasetXXX``:

- labels, regions (``regions_class_order``), channels and file ending as dataset.json says;
  2D for ``.png`` / ``.tif`` / ``.tiff``, 3D for NIfTI;
- scoring: Dice and HD95 (mm) per label (``"classes"``) or per region (``"regions"``), mean
  Dice the main score. dataset.json may name another protocol of the suite with the key
  ``"scoring"`` (``"instances"``: F1 at IoU 0.5 on ``labelsTr-instance`` masks, as Cell);
- patch: planned from the fingerprint (see :func:`logvmamba.config.resolve_recipe`);
- normalisation ``"nnunet"``: per channel name as nnU-Net v2 does it
  (:func:`logvmamba.data.fingerprint.channel_normalization`);
- split: nnU-Net's 5-fold scheme; an ``imagesTs`` folder with labels is the test set.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from logvmamba.data.registry import DatasetInfo, short_names, user_key

__all__ = ["user_info", "TWO_D_ENDINGS", "USER_SCORING"]

TWO_D_ENDINGS = (".png", ".tif", ".tiff")

# scoring -> (metrics, main, figure, ablation metrics); per-class columns are added for classes/regions
USER_SCORING = {
    "classes": ((), "Dice_mean", "Dice_mean", ("Dice_mean", "HD95_mean")),
    "regions": ((), "Dice_mean", "Dice_mean", ("Dice_mean", "HD95_mean")),
    "instances": (("F1", "DSC"), "F1", "DSC", ("F1", "DSC")),
    "endovis": (("DSC", "NSD"), "DSC", "DSC", ("DSC", "NSD")),
}


def _first_sentence(text: str) -> str:
    head, _, _ = text.strip().partition(". ")
    return head.rstrip(".")


def user_info(folder: str | os.PathLike, dataset_json: Mapping) -> DatasetInfo:
    """The :class:`DatasetInfo` of a user dataset from its folder name and dataset.json.

    Raises:
        ValueError: the folder is not named ``DatasetXXX_Name``, or dataset.json names an
            unknown ``scoring``.
    """
    name = Path(folder).name
    key = user_key(name)
    labels = {k: (tuple(int(x) for x in v) if isinstance(v, (list, tuple)) else int(v))
              for k, v in dataset_json["labels"].items()}
    regions = [(k, v) for k, v in labels.items() if isinstance(v, tuple)]
    if regions:
        class_names = tuple(k for k, _ in regions)
        kind, scoring = "sigmoid", "regions"
    else:
        class_names = tuple(k for k, _ in sorted(labels.items(), key=lambda kv: kv[1]))
        kind, scoring = "softmax", "classes"
    scoring = str(dataset_json.get("scoring", scoring))
    if scoring not in USER_SCORING:
        raise ValueError(f"{Path(folder) / 'dataset.json'}: scoring {scoring!r} unknown; known: {', '.join(USER_SCORING)}")
    metrics, main, figure, ablation = USER_SCORING[scoring]
    if not metrics:
        scored = class_names if regions else class_names[1:]
        short = short_names(scored)
        metrics = (*(f"Dice_{s}" for s in short), "Dice_mean", *(f"HD95_{s}" for s in short), "HD95_mean")
    channels = dataset_json.get("channel_names", dataset_json.get("modality"))
    order = dataset_json.get("regions_class_order")
    ending = str(dataset_json["file_ending"])
    return DatasetInfo(
        key=key,
        title=str(dataset_json.get("name", name)),
        nnunet_name=name,
        spatial_dims=2 if ending in TWO_D_ENDINGS else 3,
        in_channels=len(channels),
        num_outputs=len(class_names),
        output_kind=kind,
        channel_names=tuple(str(channels[str(i)]) for i in range(len(channels))),
        labels=MappingProxyType(labels),
        regions_class_order=tuple(int(v) for v in order) if order is not None else None,
        class_names=class_names,
        file_ending=ending,
        patch_size=None,
        normalization="nnunet",
        sampling="foreground",
        split_protocol="kfold",
        url="",
        download_note=_first_sentence(str(dataset_json.get("description") or "")) or "a user dataset",
        synthetic_name=name,
        synthetic_patch_size=None,
        short_title=name.split("_", 1)[1],
        scoring=scoring,
        metrics=tuple(metrics),
        main_metric=main,
        figure_metric=figure,
        ablation_metrics=ablation,
        instance_labels=scoring == "instances",
        user=True,
    )
