"""Storage layer of the frozen-encoder feature cache: shards, index, fingerprint and the build.

A cache directory holds

- ``features-00000.safetensors`` ...: tensors ``features`` (n, N, C) and ``indices`` (n,) (the record
  index of each row), at most ``shard_bytes`` of features per shard;
- ``index.json``, written last: the fingerprint, shapes, shard list and the images that failed to decode.

The fingerprint hashes everything the features depend on -- the encoder config, its weights, the timm
data config and transform, the storage dtype and the identity of the records -- so a cache is rebuilt
whenever one of them changes and reused otherwise. A cache is built in a temporary directory that is
renamed into place once complete: an interrupted build never leaves an ``index.json`` behind.

Shards are written here and read with ``numpy.memmap`` on a header parsed here (no safetensors
dependency at read time). The reading side and the entry points live in :mod:`mmgen.data.features`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import socket
import struct
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mmgen.config import to_dict
from mmgen.data.datasets import CaptionEvalDataset
from mmgen.data.images import BadItem
from mmgen.data.records import Record
from mmgen.runtime import bf16_autocast

INDEX_NAME = "index.json"
FORMAT = "mmgen-features"
FORMAT_VERSION = 1
DEFAULT_SHARD_BYTES = 1 << 30
"""Features per shard (1 GiB)."""

_SHARD_RE = re.compile(r"features-\d{5}\.safetensors")
STORAGE_DTYPES = {
    torch.float32: ("F32", np.float32),
    torch.float16: ("F16", np.float16),
    torch.bfloat16: ("BF16", np.int16),
}
"""Feature storage dtype -> (safetensors code, numpy dtype of the raw elements); bf16 is read as int16 and viewed."""
DTYPE_CODES = {code: (dt, np_dt) for dt, (code, np_dt) in STORAGE_DTYPES.items()}
DTYPE_CODES["I64"] = (torch.int64, np.int64)


# --------------------------------------------------------------------------------------------
# safetensors files, written and memory-mapped here
# --------------------------------------------------------------------------------------------


def _raw(t: torch.Tensor) -> memoryview:
    """The bytes of a CPU tensor (any dtype, bf16 included), without a copy when contiguous."""
    return memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def write_shard(path: Path, chunks: Sequence[torch.Tensor], indices: Sequence[int]) -> None:
    """Write ``features`` (the chunks concatenated on dim 0) and ``indices`` as one safetensors file.

    Args:
        path: Output file.
        chunks: CPU tensors (n_i, N, C) of one dtype.
        indices: The record index of every row (sum of n_i values).
    """
    dtype = chunks[0].dtype
    shape = [sum(c.shape[0] for c in chunks), *chunks[0].shape[1:]]
    nbytes = math.prod(shape) * chunks[0].element_size()
    n = shape[0]
    header = {
        "__metadata__": {"format": "pt"},
        "features": {"dtype": STORAGE_DTYPES[dtype][0], "shape": shape, "data_offsets": [0, nbytes]},
        "indices": {"dtype": "I64", "shape": [n], "data_offsets": [nbytes, nbytes + 8 * n]},
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data region starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for c in chunks:
            f.write(_raw(c))
        f.write(np.asarray(indices, dtype="<i8").tobytes())
        f.flush()
        os.fsync(f.fileno())


def read_header(path: str | Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the file offset where its data region starts."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:
            raise ValueError(f"{path}: implausible safetensors header length {n}")
        return json.loads(f.read(n)), 8 + n


def memmap_tensor(path: str | Path, name: str) -> tuple[np.memmap, torch.dtype]:
    """Memory-map one tensor of a safetensors file (read-only).

    Returns:
        The raw array (bf16 data as int16: view it with :func:`to_torch`) and the tensor's torch dtype.
    """
    header, start = read_header(path)
    info = header[name]
    dtype, np_dtype = DTYPE_CODES[info["dtype"]]
    shape = tuple(info["shape"])
    begin, end = info["data_offsets"]
    if end - begin != math.prod(shape) * np.dtype(np_dtype).itemsize:
        raise ValueError(f"{path}: tensor {name!r} has {end - begin} bytes for shape {shape}")
    return np.memmap(path, dtype=np_dtype, mode="r", offset=start + begin, shape=shape), dtype


def to_torch(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A tensor owning a copy of ``array`` (e.g. rows of a memmap), viewed as ``dtype`` (bf16 from int16)."""
    t = torch.from_numpy(np.array(array))
    return t.view(dtype) if t.dtype != dtype else t


# --------------------------------------------------------------------------------------------
# fingerprint
# --------------------------------------------------------------------------------------------


def weights_hash(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers (names, dtypes, shapes and raw bytes)."""
    h = hashlib.sha256()
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        t = t.detach().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(_raw(t))
    return h.hexdigest()


def _source_key(image: Any) -> str:
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        # length + checksum of the head: reading every byte of a large corpus at each start is too slow
        return f"bytes:{len(image)}:{zlib.crc32(bytes(image[:65536])):08x}"
    size = getattr(image, "size", None)
    return f"{type(image).__name__}:{size}"


def records_identity(records: Sequence[Record]) -> dict:
    """Count and SHA-256 of the records' image sources and ids (captions do not change features)."""
    h = hashlib.sha256()
    for i in range(len(records)):
        rec = records[i]
        h.update(f"{_source_key(rec.image)}\x1f{rec.image_id!r}\x1e".encode())
    return {"count": len(records), "sha256": h.hexdigest()}


def _transform_description(transform: Any) -> str:
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(transform))  # object addresses vary between runs


def cache_fingerprint(
    encoder: torch.nn.Module,
    data_config: dict,
    transform: Any,
    records: Sequence[Record],
    dtype: torch.dtype,
    max_pixels: int | None,
) -> tuple[str, dict]:
    """The fingerprint of the features of ``records`` under ``encoder``.

    Args:
        encoder: The encoder (a :class:`~mmgen.models.encoder.Encoder`, with ``cfg``).
        data_config: Its resolved timm data config.
        transform: The image transform built from it.
        records: The records.
        dtype: Storage dtype of the features.
        max_pixels: Decompression-bomb limit (decides which images fail).

    Returns:
        ``(hex digest, the parts it hashes)``.
    """
    parts = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "encoder": to_dict(encoder.cfg),
        "keep_prefix_tokens": bool(encoder.cfg.keep_prefix_tokens),
        "data_config": json.loads(json.dumps(data_config, default=str)),
        "transform": _transform_description(transform),
        "weights_sha256": weights_hash(encoder),
        "dtype": str(dtype).removeprefix("torch."),
        "max_pixels": max_pixels,
        "records": records_identity(records),
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return digest, parts


# --------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------


def _as_list(items: list[Any]) -> list[Any]:
    return items


class _ShardWriter:
    """Accumulates feature rows and writes a shard whenever ``shard_bytes`` of them are pending."""

    def __init__(self, out: Path, shard_bytes: int) -> None:
        self.out, self.shard_bytes = out, shard_bytes
        self.chunks: list[torch.Tensor] = []
        self.indices: list[int] = []
        self.shards: list[dict] = []
        self.rows_per_shard = 0
        self.rows = 0
        self.shape: tuple[int, ...] = ()  # (N, C) of one row

    def add(self, feats: torch.Tensor, indices: list[int]) -> None:
        """Append rows (B, N, C) belonging to records ``indices``."""
        if not self.rows_per_shard:
            self.shape = tuple(int(d) for d in feats.shape[1:])
            self.rows_per_shard = max(1, self.shard_bytes // (feats[0].numel() * feats.element_size()))
        while feats.shape[0]:
            take = min(feats.shape[0], self.rows_per_shard - len(self.indices))
            self.chunks.append(feats[:take])
            self.indices.extend(indices[:take])
            feats, indices = feats[take:], indices[take:]
            if len(self.indices) == self.rows_per_shard:
                self.flush()

    def flush(self) -> None:
        if not self.indices:
            return
        name = f"features-{len(self.shards):05d}.safetensors"
        write_shard(self.out / name, self.chunks, self.indices)
        self.shards.append({"file": name, "rows": len(self.indices)})
        self.rows += len(self.indices)
        self.chunks, self.indices = [], []


def _is_cache_dir(path: Path) -> bool:
    """Whether an existing directory holds only what a feature cache writes (safe to replace)."""
    return all(p.name == INDEX_NAME or _SHARD_RE.fullmatch(p.name) for p in path.iterdir())


def _remove_leftovers(cache_dir: Path) -> None:
    """Delete temporary directories of builds on this host whose process is gone (killed builds)."""
    host = re.escape(socket.gethostname())
    pattern = re.compile(rf"\.{re.escape(cache_dir.name)}\.(?:tmp|old)-{host}-(\d+)-\w+")
    for p in cache_dir.parent.iterdir():
        m = pattern.fullmatch(p.name)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        try:
            os.kill(int(m.group(1)), 0)  # raises when no such process
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            pass


def _scratch(cache_dir: Path, kind: str) -> Path:
    return cache_dir.parent / f".{cache_dir.name}.{kind}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _install(tmp: Path, cache_dir: Path) -> None:
    """Move a finished build into place, replacing a stale cache."""
    old = None
    if cache_dir.exists():
        old = _scratch(cache_dir, "old")
        os.replace(cache_dir, old)
    os.replace(tmp, cache_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _encode_all(
    encoder: torch.nn.Module, loader: DataLoader, writer: _ShardWriter, dtype: torch.dtype, precision: str
) -> list[dict]:
    """Run the encoder over the loader's batches (records in order) into ``writer``; returns the failures."""
    device = next(encoder.parameters()).device
    failed: list[dict] = []
    start, was_training = 0, encoder.training
    encoder.eval()
    try:
        with torch.no_grad(), bf16_autocast(precision, device):
            for items in loader:  # the loader keeps the record order, also with workers
                good = [(start + k, it) for k, it in enumerate(items) if not isinstance(it, BadItem)]
                failed += [
                    {"index": start + k, "image_id": it.image_id, "source": it.source, "reason": it.reason}
                    for k, it in enumerate(items)
                    if isinstance(it, BadItem)
                ]
                start += len(items)
                if good:
                    pixels = torch.stack([it["pixel_values"] for _, it in good])  # (B, 3, H, W)
                    feats = encoder(pixels.to(device, non_blocking=True))  # (B, N, C)
                    writer.add(feats.to(dtype).cpu(), [i for i, _ in good])
    finally:
        encoder.train(was_training)
    writer.flush()
    return failed


def build_feature_cache(
    encoder: torch.nn.Module,
    records: Sequence[Record],
    cache_dir: str | Path,
    fingerprint: tuple[str, dict],
    transform: Callable[[Any], torch.Tensor],
    dtype: torch.dtype,
    batch_size: int = 32,
    num_workers: int = 0,
    max_pixels: int | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    precision: str = "fp32",
) -> None:
    """Encode every record's image and write the cache atomically (temporary directory, then rename).

    Args:
        encoder: The frozen encoder, on the device to run on.
        records: The records; undecodable images are listed in the index as failed.
        cache_dir: Final location (replaced if it holds a stale cache).
        fingerprint: ``(digest, parts)`` from :func:`cache_fingerprint`.
        transform: PIL image -> (3, H, W) tensor (the evaluation transform of the encoder).
        dtype: Storage dtype.
        batch_size: Images per encoder batch.
        num_workers: DataLoader workers decoding images.
        max_pixels: Decompression-bomb limit.
        shard_bytes: Feature bytes per shard.
        precision: The run's ``train.precision``: the encoder runs under its autocast
            (:func:`mmgen.runtime.bf16_autocast`), as in training.
    """
    cache_dir = Path(cache_dir)
    if cache_dir.exists() and not (cache_dir.is_dir() and _is_cache_dir(cache_dir)):
        raise FileExistsError(f"{cache_dir} exists and is not a feature cache; refusing to replace it")
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(cache_dir)
    images = CaptionEvalDataset(records, transform, max_pixels=max_pixels)
    loader = DataLoader(images, batch_size, collate_fn=_as_list, num_workers=num_workers)
    tmp = _scratch(cache_dir, "tmp")
    tmp.mkdir()
    start = time.time()
    try:
        writer = _ShardWriter(tmp, shard_bytes)
        failed = _encode_all(encoder, loader, writer, dtype, precision)
        if writer.rows == 0:
            raise RuntimeError(f"feature cache: none of the {len(records)} images decoded: {failed_listing(failed)}")
        n_tokens, dim = writer.shape
        index = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "fingerprint": fingerprint[0],
            "inputs": fingerprint[1],
            "dtype": STORAGE_DTYPES[dtype][0],
            "num_tokens": n_tokens,
            "dim": dim,
            "num_records": len(records),
            "num_rows": writer.rows,
            "shards": writer.shards,
            "failed": failed,
            "seconds": round(time.time() - start, 3),
        }
        (tmp / INDEX_NAME).write_text(json.dumps(index, indent=1, default=str))  # last: marks the build complete
        _install(tmp, cache_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def failed_listing(failed: Sequence[dict], limit: int = 20) -> str:
    """The images that failed to decode (``{"source", "reason"}`` each), the first ``limit`` named, for a message."""
    shown = "; ".join(f"{f['source']}: {f['reason']}" for f in failed[:limit])
    return shown + (f"; ... and {len(failed) - limit} more" if len(failed) > limit else "")


# --------------------------------------------------------------------------------------------
# index
# --------------------------------------------------------------------------------------------


def load_index(cache_dir: str | Path) -> dict | None:
    """The index of a complete cache in ``cache_dir``, or None (no cache, an unfinished or foreign one)."""
    path = Path(cache_dir) / INDEX_NAME
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != FORMAT_VERSION:
        return None
    if not all((Path(cache_dir) / s["file"]).is_file() for s in index.get("shards", [])):
        return None
    return index
