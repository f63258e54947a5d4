"""Caption data: records from many formats, safe image decoding, transforms, batching, the feature cache.
(Synthetic scenes are a package of their own, :mod:`mmgen.scenes`.)

Names are imported from their submodules on first use, so that a command reading records (``mmgen data
stats``) does not pay for torch/transformers imports it does not need.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "records": ("Record", "DataFormatError", "DerivedId"),
    "formats": ("FILE_FORMATS", "read_coco", "read_karpathy", "read_jsonl", "read_csv"),
    "splits": ("split_names", "select_split"),
    "sources": ("load_records", "load_split", "detect_format", "FORMATS"),
    "hf": ("hf_records", "load_hf_datasets", "HFRecords", "StreamingRecords", "split_by_node", "require_datasets"),
    "images": ("decode_image", "to_rgb", "BadImageError", "BadItem", "BadImageTracker", "TooManyBadImagesError"),
    "transforms": ("build_transform", "resolve_data_config", "image_size"),
    "collate": ("CaptionCollator", "EvalCollator", "tokenize_captions", "normalize_caption", "IGNORE_INDEX"),
    "datasets": (
        "CaptionTrainDataset",
        "CaptionEvalDataset",
        "StreamingCaptionDataset",
        "EpochSampler",
        "ConcatRecords",
        "make_loader",
    ),
    "stats": ("dataset_stats", "format_stats", "DatasetStats"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'mmgen.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"mmgen.data.{module}"), name)


def __dir__() -> list[str]:
    return __all__
