"""Torch datasets over records: a training view (image, one caption), an evaluation view (image, all
references, image_id), a streaming view, and a sampler that makes every item a function of
``(seed, epoch, index)``.

Determinism: the caption drawn for an image and any random augmentation depend only on
``(seed, epoch, index)`` -- not on the worker that loads the item, the number of workers or the
rank -- so a resumed or distributed run sees exactly the items of an uninterrupted one.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import random
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from mmgen.data.images import DEFAULT_MAX_PIXELS, BadImageError, BadItem, decode_image, source_name
from mmgen.data.records import Record

_MASK64 = (1 << 64) - 1


def item_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from a few integers (splitmix64 steps; identical in every process)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h >> 1


def stable_hash(value: Any) -> int:
    """A process-independent hash of an image id (Python's ``hash`` of a str is salted per process)."""
    return zlib.crc32(repr(value).encode())


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's and Python's global RNGs seeded, restoring them afterwards.

    timm/torchvision random transforms draw from both (RandomResizedCrop uses ``random``).
    """
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)


class ConcatRecords(Sequence):
    """Several record sequences read as one."""

    def __init__(self, parts: Sequence[Sequence[Record]]) -> None:
        self.parts = list(parts)
        self.ends = list(itertools.accumulate(len(p) for p in self.parts))

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def __getitem__(self, i: int) -> Record:  # type: ignore[override]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = bisect.bisect_right(self.ends, i)
        return self.parts[k][i - (self.ends[k - 1] if k else 0)]

    def caption_counts(self) -> list[int]:
        return [c for p in self.parts for c in caption_counts(p)]


class ChainedRecords:
    """Several record iterables (streams) read one after another."""

    def __init__(self, parts: Sequence[Iterable[Record]]) -> None:
        self.parts = list(parts)
        self.splits_by_worker = all(getattr(p, "splits_by_worker", False) for p in self.parts)

    def set_epoch(self, epoch: int) -> None:
        for p in self.parts:
            if hasattr(p, "set_epoch"):
                p.set_epoch(epoch)

    def shuffled(self, seed: int, buffer_size: int = 1000) -> ChainedRecords:
        """The parts that can shuffle (HF streams) shuffled; see :meth:`mmgen.data.hf.StreamingRecords.shuffled`."""
        return ChainedRecords([p.shuffled(seed, buffer_size) if hasattr(p, "shuffled") else p for p in self.parts])

    def __iter__(self) -> Iterator[Record]:
        return itertools.chain.from_iterable(self.parts)


def caption_counts(records: Sequence[Record]) -> list[int]:
    """Captions per record (HF-backed sequences read only their caption column)."""
    if hasattr(records, "caption_counts"):
        return records.caption_counts()
    return [len(r.captions) for r in records]


class _ImageLoading:
    """Shared decode + transform with bad images turned into :class:`BadItem`."""

    transform: Callable[[Any], torch.Tensor]
    max_pixels: int | None
    min_size: int | None

    def _pixels(self, rec: Record, seed: int | None = None) -> torch.Tensor | BadItem:
        name = source_name(rec.image, rec.image_id)
        try:
            im = decode_image(rec.image, self.max_pixels, self.min_size, name=name)
        except BadImageError as e:
            return BadItem(e.source, e.reason, rec.image_id)
        if seed is None:
            return self.transform(im)
        with seeded(seed):
            return self.transform(im)  # (3, H, W)


class CaptionTrainDataset(_ImageLoading, Dataset):
    """Training view: (image, one caption) items; images without captions are left out.

    Args:
        records: The training records.
        transform: PIL image -> (3, H, W) tensor (see :func:`mmgen.data.transforms.build_transform`).
        caption_sampling: 'random' -- one item per image, a reference drawn from
            ``(seed, epoch, index)``; 'all' -- one item per image-caption pair.
        seed: Seed of the caption draw and of the augmentation.
        captions_per_image: With 'random', draw this many references per item, without replacement
            (cycling through them when an image has fewer); items then hold ``captions``, a list.
        max_pixels: Decompression-bomb guard (``DataConfig.max_pixels``).
        min_size: Allow reduced-scale JPEG decoding down to this side length (None: full decode).

    Items are dicts ``{"pixel_values", "caption", "image_id"}``, or a :class:`BadItem` when the image
    cannot be decoded. An index may be an int (epoch from :meth:`set_epoch`) or an ``(epoch, index)``
    pair from :class:`EpochSampler`, which also works with persistent DataLoader workers.
    """

    def __init__(
        self,
        records: Sequence[Record],
        transform: Callable[[Any], torch.Tensor],
        caption_sampling: str = "random",
        seed: int = 0,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        min_size: int | None = None,
        captions_per_image: int = 1,
    ) -> None:
        if caption_sampling not in ("random", "all"):
            raise ValueError(f"caption_sampling must be 'random' or 'all', got {caption_sampling!r}")
        if captions_per_image < 1 or (captions_per_image > 1 and caption_sampling != "random"):
            raise ValueError(
                f"captions_per_image={captions_per_image} needs >= 1 and, above 1, caption_sampling random"
            )
        self.records, self.transform, self.caption_sampling = records, transform, caption_sampling
        self.captions_per_image = captions_per_image
        self.seed, self.max_pixels, self.min_size = seed, max_pixels, min_size
        self.epoch = 0
        self.preloaded = None  # a mmgen.data.preload.PreloadedImages: images decoded once, by record index
        self.counts = caption_counts(records)  # kept: reading a record (HF row) to count would cost a decode
        self.record_index = [i for i, c in enumerate(self.counts) if c > 0]  # item -> record ('random')
        self.ends = list(itertools.accumulate(self.counts))  # record -> end of its pairs ('all')

    def set_epoch(self, epoch: int) -> None:
        """Epoch for int indices (DataLoader workers created afterwards see it)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.record_index) if self.caption_sampling == "random" else (self.ends[-1] if self.ends else 0)

    def locate(self, index: int, epoch: int) -> tuple[int, int]:
        """(record index, caption index) of an item."""
        if self.caption_sampling == "all":
            r = bisect.bisect_right(self.ends, index)
            return r, index - (self.ends[r - 1] if r else 0)
        r = self.record_index[index]
        return r, item_seed(self.seed, epoch, index) % self.counts[r]

    def text(self, rec: Record, index: int, epoch: int, c: int) -> dict:
        """The caption fields of an item: ``caption`` (reference ``c``), or ``captions`` (K references)."""
        if self.captions_per_image == 1:
            return {"caption": rec.captions[c]}
        return {"captions": pick_captions(rec.captions, self.captions_per_image, self.seed, epoch, index)}

    def __getitem__(self, key: int | tuple[int, int]) -> dict | BadItem:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        if not 0 <= index < len(self):
            raise IndexError(index)
        r, c = self.locate(index, epoch)
        rec = self.records[r]
        if self.preloaded is not None:
            pixels = self.preloaded.get(r)
        else:
            pixels = self._pixels(rec, seed=item_seed(self.seed, epoch, index, 1))
        if isinstance(pixels, BadItem):
            return pixels
        return {"pixel_values": pixels, **self.text(rec, index, epoch, c), "image_id": rec.image_id}


def pick_captions(captions: Sequence[str], k: int, *seed: int) -> list[str]:
    """``k`` of an image's references in an order drawn from ``seed``: each once before any repeats."""
    g = torch.Generator().manual_seed(item_seed(*seed, 2))
    order = torch.randperm(len(captions), generator=g).tolist()
    return [captions[order[j % len(order)]] for j in range(k)]


class CaptionEvalDataset(_ImageLoading, Dataset):
    """Evaluation view: one item per image with all its references.

    Items are dicts ``{"pixel_values", "references", "image_id"}``, or a :class:`BadItem` carrying the
    image_id, which :class:`~mmgen.data.collate.EvalCollator` reports as a failed entry.
    """

    def __init__(
        self,
        records: Sequence[Record],
        transform: Callable[[Any], torch.Tensor],
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        min_size: int | None = None,
    ) -> None:
        self.records, self.transform, self.max_pixels, self.min_size = records, transform, max_pixels, min_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict | BadItem:
        rec = self.records[index]
        pixels = self._pixels(rec)
        if isinstance(pixels, BadItem):
            return pixels
        return {"pixel_values": pixels, "references": list(rec.captions), "image_id": rec.image_id}


class StreamingCaptionDataset(_ImageLoading, IterableDataset):
    """Streaming view over an iterable of records (e.g. :class:`mmgen.data.hf.StreamingRecords`).

    Args:
        records: Records, read once per epoch.
        transform: PIL image -> (3, H, W) tensor.
        mode: 'random' (one caption per image, drawn from (seed, epoch, image_id)), 'all' (every
            pair) or 'eval' (items of :class:`CaptionEvalDataset`).
        seed: Seed of the caption draw and the augmentation.
        max_pixels: Decompression-bomb guard.
        min_size: Allow reduced-scale JPEG decoding.
        captions_per_image: With 'random', items hold ``captions``: this many references (see
            :class:`CaptionTrainDataset`).
    """

    def __init__(
        self,
        records: Iterable[Record],
        transform: Callable[[Any], torch.Tensor],
        mode: str = "random",
        seed: int = 0,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        min_size: int | None = None,
        captions_per_image: int = 1,
    ) -> None:
        if mode not in ("random", "all", "eval"):
            raise ValueError(f"mode must be 'random', 'all' or 'eval', got {mode!r}")
        if captions_per_image < 1 or (captions_per_image > 1 and mode != "random"):
            raise ValueError(f"captions_per_image={captions_per_image} needs >= 1 and, above 1, mode random")
        self.records, self.transform, self.mode, self.seed = records, transform, mode, seed
        self.max_pixels, self.min_size, self.captions_per_image = max_pixels, min_size, captions_per_image
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.records, "set_epoch"):
            self.records.set_epoch(epoch)

    def _worker_records(self) -> Iterable[Record]:
        """This DataLoader worker's records: HF streams split their shards themselves, others every n-th."""
        info = torch.utils.data.get_worker_info()
        if info is None or info.num_workers <= 1 or getattr(self.records, "splits_by_worker", False):
            return self.records
        return itertools.islice(self.records, info.id, None, info.num_workers)

    def __iter__(self) -> Iterator[dict | BadItem]:
        for rec in self._worker_records():
            key = stable_hash(rec.image_id)  # the position in a stream depends on workers; the id does not
            if self.mode == "eval":
                pixels = self._pixels(rec)
                yield (
                    pixels
                    if isinstance(pixels, BadItem)
                    else {"pixel_values": pixels, "references": list(rec.captions), "image_id": rec.image_id}
                )
                continue
            if not rec.captions:
                continue
            chosen = (
                range(len(rec.captions))
                if self.mode == "all"
                else [item_seed(self.seed, self.epoch, key) % len(rec.captions)]
            )
            for c in chosen:
                pixels = self._pixels(rec, seed=item_seed(self.seed, self.epoch, key, c, 1))
                if isinstance(pixels, BadItem):
                    yield pixels
                    continue
                text = (
                    {"caption": rec.captions[c]}
                    if self.captions_per_image == 1
                    else {"captions": pick_captions(rec.captions, self.captions_per_image, self.seed, self.epoch, key)}
                )
                yield {"pixel_values": pixels, **text, "image_id": rec.image_id}


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` pairs: a permutation drawn from (seed, epoch), this rank's share of it.

    Because the epoch travels with every index, items do not depend on when DataLoader workers were
    started (persistent workers are fine). ``start`` skips the first items of this rank's share, to
    resume mid-epoch.

    Args:
        size: Number of items of the dataset.
        seed: Seed of the permutation.
        shuffle: Permute (True) or keep the order.
        rank: This process's rank.
        world_size: Number of ranks; the permutation is padded by repetition to a multiple of it (like
            ``DistributedSampler``) unless ``drop_last``.
        drop_last: Trim instead of padding.
    """

    def __init__(
        self,
        size: int,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch (and the position in it to resume from)."""
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(item_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        if self.drop_last:
            order = order[: len(order) - len(order) % self.world_size]
        elif order and len(order) % self.world_size:
            order += (order * self.world_size)[: self.world_size - len(order) % self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self._indices()[self.start :]:
            yield self.epoch, i

    def __len__(self) -> int:
        return len(self._indices()) - self.start


def _seed_worker(worker_id: int) -> None:
    # numpy and random in workers start from torch's per-worker seed, itself from the loader's generator
    import numpy as np

    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    collate_fn: Callable,
    sampler: Sampler | None = None,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    persistent_workers: bool = False,
) -> DataLoader:
    """A DataLoader whose worker RNGs derive from ``seed`` (for datasets and samplers of this module)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=_seed_worker,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
    )
