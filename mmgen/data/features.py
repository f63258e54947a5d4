"""Frozen-encoder feature cache: encoder tokens precomputed once into memory-mapped safetensors shards.

With ``model.encoder.freeze: all`` the encoder computes the same tokens for an image in every epoch;
training the projector and decoder from a cache of them skips the encoder (and image decoding)
entirely. This module is the reading side and the entry points: :class:`FeatureCache` (a complete
cache opened for reading), :class:`FeatureTrainDataset` and :class:`FeatureCollator` (training from
it) and :func:`ensure_feature_cache` (open a matching cache or build it; ``mmgen data features`` builds
one without training, :func:`mmgen.commands.data_command.build_feature_cache_cli`).

The on-disk format (shards and ``index.json``), the fingerprint that decides when a cache is rebuilt
and the atomic build live in :mod:`mmgen.data.feature_store`; its public names are re-exported here.

Shards are read with ``numpy.memmap``, opened lazily in each process, so datasets pickle cleanly into
DataLoader workers.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mmgen import distributed as D
from mmgen.config import Config
from mmgen.data.collate import caption_fields, split_bad
from mmgen.data.datasets import CaptionTrainDataset, caption_counts
from mmgen.data.feature_store import (
    DEFAULT_SHARD_BYTES,
    DTYPE_CODES,
    FORMAT,
    FORMAT_VERSION,
    INDEX_NAME,
    STORAGE_DTYPES,
    build_feature_cache,
    cache_fingerprint,
    failed_listing,
    load_index,
    memmap_tensor,
    read_header,
    records_identity,
    to_torch,
    weights_hash,
    write_shard,
)
from mmgen.data.images import TooManyBadImagesError
from mmgen.data.records import Record
from mmgen.data.transforms import build_transform, resolve_data_config
from mmgen.distributed import DistState

__all__ = [
    "DEFAULT_SHARD_BYTES",
    "FORMAT",
    "FORMAT_VERSION",
    "INDEX_NAME",
    "FeatureCache",
    "FeatureCollator",
    "FeatureTrainDataset",
    "build_feature_cache",
    "cache_fingerprint",
    "ensure_feature_cache",
    "load_index",
    "memmap_tensor",
    "read_header",
    "records_identity",
    "to_torch",
    "weights_hash",
    "write_shard",
]


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


class FeatureCache:
    """A complete feature cache, opened for reading; shards are memory-mapped lazily in each process.

    Args:
        path: The cache directory.
        fingerprint: When given, the cache must have this fingerprint (else ValueError).

    Attributes:
        path: The cache directory.
        index: The parsed ``index.json``.
        dtype: Storage dtype of the features.
        record_row: (num_records,) row of each record over all shards, -1 for failed images.
        built: Whether :func:`ensure_feature_cache` built the cache (False: an existing one was reused).
    """

    def __init__(self, path: str | Path, fingerprint: str | None = None) -> None:
        self.path = Path(path)
        index = load_index(self.path)
        if index is None:
            raise FileNotFoundError(f"{self.path}: no complete feature cache ({INDEX_NAME} missing or unreadable)")
        if fingerprint is not None and index["fingerprint"] != fingerprint:
            raise ValueError(
                f"{self.path}: the feature cache was built for another encoder, preprocessing or record list "
                f"(fingerprint {index['fingerprint'][:12]}, expected {fingerprint[:12]})"
            )
        self.index = index
        self.dtype = DTYPE_CODES[index["dtype"]][0]
        self.built = False
        self._files = [self.path / s["file"] for s in index["shards"]]
        self._starts = [0]  # first global row of each shard
        self.record_row = np.full(index["num_records"], -1, dtype=np.int64)
        for f in self._files:
            idx, _ = memmap_tensor(f, "indices")
            self.record_row[np.asarray(idx)] = self._starts[-1] + np.arange(len(idx))
            self._starts.append(self._starts[-1] + len(idx))
        self._maps: list[np.memmap] | None = None
        self._pid: int | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_maps"], state["_pid"] = None, None  # every process maps the shards itself
        return state

    @property
    def num_records(self) -> int:
        """Records the cache was built from (failed images included)."""
        return int(self.index["num_records"])

    @property
    def row_shape(self) -> tuple[int, int]:
        """(N, C): tokens per image and their width."""
        return int(self.index["num_tokens"]), int(self.index["dim"])

    @property
    def failed(self) -> list[dict]:
        """``{"index", "image_id", "source", "reason"}`` of every image that could not be decoded."""
        return list(self.index["failed"])

    @property
    def available(self) -> np.ndarray:
        """(num_records,) bool: which records have features."""
        return self.record_row >= 0

    def _arrays(self) -> list[np.memmap]:
        if self._maps is None or self._pid != os.getpid():
            self._maps = [memmap_tensor(f, "features")[0] for f in self._files]
            self._pid = os.getpid()
        return self._maps

    def features(self, record: int) -> torch.Tensor:
        """The (N, C) encoder tokens of record ``record`` (KeyError when its image failed to decode)."""
        row = int(self.record_row[record])
        if row < 0:
            raise KeyError(f"record {record} has no cached features (its image could not be decoded)")
        k = bisect.bisect_right(self._starts, row) - 1
        return to_torch(self._arrays()[k][row - self._starts[k]], self.dtype)  # (N, C)

    def train_dataset(
        self, records: Sequence[Record], caption_sampling: str = "random", seed: int = 0, captions_per_image: int = 1
    ) -> Dataset:
        """A :class:`FeatureTrainDataset` over ``records`` (the records the cache was built from)."""
        return FeatureTrainDataset(self, records, caption_sampling, seed, captions_per_image)

    def collator(
        self, tokenizer: Any, prompt: str = "", max_caption_tokens: int = 32, pad_to_multiple_of: int | None = None
    ) -> FeatureCollator:
        """A collate function for :meth:`train_dataset` items (see :class:`FeatureCollator`)."""
        return FeatureCollator(tokenizer, prompt, max_caption_tokens, pad_to_multiple_of, self.row_shape, self.dtype)


class _CachedRecords(Sequence):
    """Records in which those without features count as having no captions, so training leaves them out."""

    def __init__(self, records: Sequence[Record], available: np.ndarray) -> None:
        self.records, self.available = records, available

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Record:  # type: ignore[override]
        return self.records[i]

    def caption_counts(self) -> list[int]:
        return [n if ok else 0 for n, ok in zip(caption_counts(self.records), self.available.tolist())]


def _no_transform(image: Any) -> torch.Tensor:
    raise RuntimeError("a feature dataset never decodes images")


class FeatureTrainDataset(Dataset):
    """Training view over cached features, indexed exactly like :class:`CaptionTrainDataset`.

    The item of ``(epoch, index)`` is the one :class:`CaptionTrainDataset` over the same records gives
    (same record, same caption draw), with the image's cached tokens in place of its pixels; records
    whose image failed to decode are left out as if they had no captions.

    Items are dicts ``{"features": (N, C) tensor, "caption", "image_id"}``.
    """

    def __init__(
        self,
        cache: FeatureCache,
        records: Sequence[Record],
        caption_sampling: str = "random",
        seed: int = 0,
        captions_per_image: int = 1,
    ):
        if len(records) != cache.num_records:
            raise ValueError(f"{cache.path}: the cache holds {cache.num_records} records, got {len(records)}")
        self.cache, self.records = cache, records
        view = _CachedRecords(records, cache.available)
        self.items = CaptionTrainDataset(  # indexing and caption draws only
            view, _no_transform, caption_sampling, seed, captions_per_image=captions_per_image
        )

    def set_epoch(self, epoch: int) -> None:
        """Epoch for int indices."""
        self.items.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def locate(self, index: int, epoch: int) -> tuple[int, int]:
        """(record index, caption index) of an item (:meth:`CaptionTrainDataset.locate`)."""
        return self.items.locate(index, epoch)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, index = key if isinstance(key, tuple) else (self.items.epoch, key)
        if not 0 <= index < len(self):
            raise IndexError(index)
        r, c = self.locate(index, epoch)
        rec = self.records[r]
        return {"features": self.cache.features(r), **self.items.text(rec, index, epoch, c), "image_id": rec.image_id}


class FeatureCollator:
    """Collate :class:`FeatureTrainDataset` items into a batch for ``CaptionModel(features=...)``.

    The batch holds ``features`` (B, N, C) in the storage dtype, ``input_ids`` / ``attention_mask`` /
    ``labels`` (B, T) from :func:`~mmgen.data.collate.tokenize_captions`, ``image_ids``, ``captions`` and
    ``bad`` (``(source, reason)`` of dropped :class:`BadItem` entries, as with pixel batches).
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt: str = "",
        max_caption_tokens: int = 32,
        pad_to_multiple_of: int | None = None,
        row_shape: tuple[int, int] = (0, 0),
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.tokenizer, self.prompt = tokenizer, prompt
        self.max_caption_tokens, self.pad_to_multiple_of = max_caption_tokens, pad_to_multiple_of
        self.row_shape, self.dtype = tuple(row_shape), dtype

    def __call__(self, items: list[Any]) -> dict[str, Any]:
        good, bad = split_bad(items)
        if good:
            features = torch.stack([it["features"] for it in good])  # (B, N, C)
        else:
            features = torch.zeros((0, *self.row_shape), dtype=self.dtype)
        batch: dict[str, Any] = {"features": features}
        batch.update(
            caption_fields(good, bad, self.tokenizer, self.prompt, self.max_caption_tokens, self.pad_to_multiple_of)
        )
        return batch


# --------------------------------------------------------------------------------------------
# entry points
# --------------------------------------------------------------------------------------------


def _resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."), None)
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"feature cache dtype must be one of float32, bfloat16, float16; got {dtype!r}")
    return dtype


def _check_failures(cache: FeatureCache, cfg: Config, dist: DistState) -> None:
    failed = cache.failed
    if not failed:
        return
    message = (
        f"feature cache {cache.path}: {len(failed)} of {cache.num_records} images could not be decoded "
        f"and are left out of training: {failed_listing(failed)}"
    )
    if len(failed) > cfg.data.max_bad_fraction * cache.num_records:
        raise TooManyBadImagesError(f"{message} (more than data.max_bad_fraction={cfg.data.max_bad_fraction})")
    if dist.is_main:
        print(message)


def ensure_feature_cache(
    model: torch.nn.Module,
    records: Sequence[Record],
    cache_dir: str | Path,
    cfg: Config,
    dist: DistState,
    *,
    dtype: torch.dtype | str | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    batch_size: int | None = None,
    num_workers: int | None = None,
) -> FeatureCache:
    """Open the feature cache in ``cache_dir`` if it matches ``model`` and ``records``; build it otherwise.

    Rank 0 builds (other ranks wait at a barrier, then open). Images that cannot be decoded are
    listed in the index, printed and left out of training; more than ``data.max_bad_fraction`` of
    them raises :class:`~mmgen.data.images.TooManyBadImagesError`.

    Args:
        model: A ``CaptionModel`` (its ``encoder`` is used) or the encoder itself, on its device.
        records: The training records.
        cache_dir: The cache directory.
        cfg: The run config (``data.max_pixels``, ``data.num_workers``, ``eval.batch_size``, ``train.precision``).
        dist: This process's distributed state.
        dtype: Storage dtype (default: bfloat16 on CUDA, float32 on CPU).
        shard_bytes: Feature bytes per shard.
        batch_size: Images per encoder batch (default ``eval.batch_size``).
        num_workers: Image-decoding workers (default ``data.num_workers``).

    Returns:
        The opened cache; its ``built`` attribute tells whether this call (re)built it.
    """
    encoder = getattr(model, "encoder", model)
    device = next(encoder.parameters()).device
    dtype = _resolve_dtype(dtype, device)
    data_config = resolve_data_config(encoder.data_config)
    transform = build_transform(data_config)  # the evaluation transform: no augmentation in a cache
    digest, parts = cache_fingerprint(encoder, data_config, transform, records, dtype, cfg.data.max_pixels)
    cache_dir = Path(cache_dir)
    built = False
    if dist.is_main:
        index = load_index(cache_dir)
        if index is None or index["fingerprint"] != digest:
            why = "building" if index is None else "rebuilding (encoder, preprocessing or records changed)"
            print(f"feature cache {cache_dir}: {why} for {len(records)} images")
            build_feature_cache(
                encoder, records, cache_dir, (digest, parts), transform, dtype,
                batch_size=batch_size or cfg.eval.batch_size,
                num_workers=cfg.data.num_workers if num_workers is None else num_workers,
                max_pixels=cfg.data.max_pixels, shard_bytes=shard_bytes,
                precision=cfg.train.precision,
            )  # fmt: skip
            built = True
        if cfg.data.augment:
            print("feature cache: data.augment has no effect, features come from the evaluation transform")
    D.barrier()
    cache = FeatureCache(cache_dir, fingerprint=digest)
    cache.built = built
    _check_failures(cache, cfg, dist)
    return cache
