"""Decode a training set once into memory: uint8 images at the encoder's input size.

When the decoded images fit in RAM (40,000 synthetic 64x64 scenes are 0.5 GB; COCO's 118k train2017
images at 224x224 are 18 GB), decoding, resizing and cropping every image once instead of once per
epoch takes image decoding out of the training loop: a batch is then a gather from one tensor. Only a
deterministic transform can be stored, so preloading excludes augmentation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from mmgen.data.images import DEFAULT_MAX_PIXELS, BadItem
from mmgen.data.records import Record


class PreloadedImages:
    """Every record's image after the transform, as one uint8 tensor; undecodable ones kept as :class:`BadItem`.

    Args:
        pixels: (N, 3, H, W) uint8, row i for record i (zeros where the image was bad).
        bad: Record index -> the :class:`BadItem` of its failed decode.
    """

    def __init__(self, pixels: torch.Tensor, bad: dict[int, BadItem]) -> None:
        self.pixels, self.bad = pixels, bad

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def get(self, index: int) -> torch.Tensor | BadItem:
        """The (3, H, W) uint8 image of record ``index``, or its :class:`BadItem`."""
        return self.bad.get(index, self.pixels[index])

    @property
    def nbytes(self) -> int:
        return self.pixels.numel() * self.pixels.element_size()


def _pack(items: list) -> tuple[torch.Tensor | None, list[int], dict[int, BadItem]]:
    """One worker batch as one stacked uint8 tensor (one shared-memory transfer, not one per image)."""
    good = [i for i, it in enumerate(items) if not isinstance(it, BadItem)]
    bad = {i: it for i, it in enumerate(items) if isinstance(it, BadItem)}
    for i in good:
        if items[i]["pixel_values"].dtype != torch.uint8:
            raise ValueError(f"preloading stores uint8 images; the transform gave {items[i]['pixel_values'].dtype}")
    pixels = torch.stack([items[i]["pixel_values"] for i in good]) if good else None  # (G, 3, H, W)
    return pixels, good, bad


def preload_images(
    records: Sequence[Record],
    transform: Callable[[Any], torch.Tensor],
    num_workers: int = 0,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    batch_size: int = 256,
    log: Callable[[str], None] | None = print,
) -> PreloadedImages:
    """Decode and transform every record's image once (in ``num_workers`` processes).

    Args:
        records: The records, indexed like the training dataset's records.
        transform: A deterministic PIL -> (3, H, W) uint8 transform (``build_transform(..., uint8=True)``).
        num_workers: DataLoader worker processes for decoding.
        max_pixels: Decompression-bomb guard.
        batch_size: Images per worker task.
        log: Where the one-line summary goes (None: nowhere).

    Returns:
        The :class:`PreloadedImages`.
    """
    from mmgen.data.datasets import CaptionEvalDataset

    t0 = time.perf_counter()
    ds = CaptionEvalDataset(records, transform, max_pixels=max_pixels)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=_pack)
    pixels: torch.Tensor | None = None
    bad: dict[int, BadItem] = {}
    start = 0
    for chunk, good, chunk_bad in loader:
        bad.update({start + i: item for i, item in chunk_bad.items()})
        if chunk is not None:
            if pixels is None:
                pixels = torch.zeros((len(ds), *chunk.shape[1:]), dtype=torch.uint8)  # (N, 3, H, W)
            pixels[torch.tensor(good) + start] = chunk
        start += len(good) + len(chunk_bad)
    if pixels is None:
        raise ValueError(f"none of the {len(ds)} training images could be decoded")
    out = PreloadedImages(pixels, bad)
    if log is not None:
        log(
            f"preloaded {len(out) - len(bad)} images ({out.nbytes / 2**20:.0f} MiB, {len(bad)} bad) "
            f"in {time.perf_counter() - t0:.1f} s"
        )
    return out
