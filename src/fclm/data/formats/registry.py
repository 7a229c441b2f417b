"""One entry point for every dataset: ``load_dataset(name, root, split=None, **kw)``.

``root`` is the data root of ``docs/data.md`` (one tree for everything); keyword arguments
override a loader's default file/folder locations (``ann_file=``, ``image_dir=``, ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .base import DatasetReader


@dataclass(frozen=True)
class LoaderSpec:
    factory: Callable[..., DatasetReader]
    default_split: str
    splits: tuple[str, ...]
    summary: str


def _lazy(module: str, cls: str) -> Callable[..., DatasetReader]:
    def make(*a, **kw):
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{module}"), cls)(*a, **kw)

    make.__name__ = f"{module}.{cls}"
    return make


_TRAIN = ("train",)
LOADERS: dict[str, LoaderSpec] = {
    "refcoco": LoaderSpec(_lazy("refcoco", "RefCocoReader"), "train", ("train", "val", "testA", "testB"),
                          "RefCOCO (refs(unc).p + instances.json)"),
    "refcoco+": LoaderSpec(_lazy("refcoco", "RefCocoReader"), "train", ("train", "val", "testA", "testB"),
                           "RefCOCO+ (refs(unc).p + instances.json)"),
    "refcocog": LoaderSpec(_lazy("refcoco", "RefCocoReader"), "train", ("train", "val", "test"),
                           "RefCOCOg (refs(umd).p + instances.json)"),
    "reasonseg": LoaderSpec(_lazy("reasonseg", "ReasonSegReader"), "train", ("train", "val", "test"),
                            "ReasonSeg (LabelMe JSON beside each image)"),
    "muse": LoaderSpec(_lazy("muse", "MuseReader"), "train", ("train", "val", "test_less", "test_many"),
                       "MUSE multi-target reasoning segmentation"),
    "osprey_short_form": LoaderSpec(_lazy("osprey", "OspreyReader"), "train", _TRAIN, "Osprey-724K short form"),
    "osprey_lvis_posneg": LoaderSpec(_lazy("osprey", "OspreyReader"), "train", _TRAIN,
                                     "Osprey-724K LVIS positive/negative"),
    "osprey_conversation": LoaderSpec(_lazy("osprey", "OspreyReader"), "train", _TRAIN,
                                      "Osprey-724K conversations"),
    "osprey_detail_description": LoaderSpec(_lazy("osprey", "OspreyReader"), "train", _TRAIN,
                                            "Osprey-724K detailed descriptions"),
    "osprey_part_level": LoaderSpec(_lazy("osprey", "OspreyReader"), "train", _TRAIN, "Osprey-724K part level"),
    "paco_lvis": LoaderSpec(_lazy("paco_lvis", "CocoCategoryReader"), "train", ("train", "val", "test"),
                            "PACO-LVIS (COCO format, obj / obj:part categories)"),
    "roc_lvis": LoaderSpec(_lazy("paco_lvis", "RocEvalReader"), "val", ("val",), "ROC eval, LVIS 1k images"),
    "roc_paco": LoaderSpec(_lazy("paco_lvis", "RocEvalReader"), "val", ("val",), "ROC eval, PACO 1k images"),
    "vg": LoaderSpec(_lazy("vg", "VGReader"), "train", _TRAIN, "Visual Genome region captions"),
    "grandf": LoaderSpec(_lazy("gcg", "GroundingsReader"), "train", _TRAIN, "GranD-f human-annotated GCG"),
    "openpsg": LoaderSpec(_lazy("gcg", "GroundingsReader"), "train", ("train", "val"), "OpenPSG GCG"),
    "refcocog_gcg": LoaderSpec(_lazy("gcg", "RefCocogGcgReader"), "train", ("train", "val"), "RefCOCOg GCG"),
    "flickr_gcg": LoaderSpec(_lazy("gcg", "FlickrGcgReader"), "train", ("train", "val"), "Flickr30K GCG"),
    "gcg_eval": LoaderSpec(_lazy("gcg", "GcgEvalReader"), "val", ("val", "test"), "GLaMM GCG eval ground truth"),
    "dam_coco_stuff": LoaderSpec(_lazy("dam_shards", "DamShardReader"), "train", _TRAIN,
                                 "Describe-Anything COCO-Stuff shards"),
    "dam_mapillary": LoaderSpec(_lazy("dam_shards", "DamShardReader"), "train", _TRAIN,
                                "Describe-Anything Mapillary shards"),
    "dam_openimages": LoaderSpec(_lazy("dam_shards", "DamShardReader"), "train", _TRAIN,
                                 "Describe-Anything OpenImages shards"),
    "dam_sa1b": LoaderSpec(_lazy("dam_shards", "DamShardReader"), "train", _TRAIN,
                           "Describe-Anything SA-1B (10%) shards"),
    "dlc_bench": LoaderSpec(_lazy("dlc_bench", "DlcBenchReader"), "test", ("test",), "DLC-Bench (100 regions)"),
    "pix2cap": LoaderSpec(_lazy("pix2cap", "Pix2CapReader"), "train", ("train", "val"), "Pix2Cap-COCO"),
}


def available_datasets() -> list[str]:
    return sorted(LOADERS)


def load_dataset(name: str, root: str, split: str | None = None, **kw) -> DatasetReader:
    """The reader of dataset ``name`` under data root ``root`` (split defaults per dataset).

    The reader is lazy: files are opened on first iteration / ``len`` / indexing.
    """
    spec = LOADERS.get(name)
    if spec is None:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(available_datasets())}")
    split = split or spec.default_split
    if split not in spec.splits and not any(k in kw for k in ("ann_file", "shards")):
        raise ValueError(f"dataset {name!r} has splits {spec.splits}, not {split!r}")
    return spec.factory(name, root, split, **kw)
