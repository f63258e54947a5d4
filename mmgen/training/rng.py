"""RNG states of every process of a job, saved in checkpoints so that a resumed run draws the same numbers.

States travel between processes and into checkpoints as JSON + tensors (see ``state_codec``), never pickled.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mmgen.training.state_codec import decode_tree, encode_tree


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """This process's RNG states: python ``random``, numpy's global generator, torch CPU and CUDA."""
    snap: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        snap["cuda"] = torch.cuda.get_rng_state_all()
    return snap


def gather_rng_states() -> list[dict]:
    """Every rank's :func:`rng_state`, in rank order, on every rank (a collective: call it on all ranks).

    Pass the result to :func:`save_checkpoint` so that each rank resumes its own dropout / noise stream.
    Outside a process group it is ``[rng_state()]``. States travel as JSON bytes, never pickled.
    """
    snap = rng_state()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [snap]
    tensors: dict[str, torch.Tensor] = {}
    tree = encode_tree(snap, "rng", tensors)
    payload = json.dumps({"tree": tree, "tensors": {k: v.tolist() for k, v in tensors.items()}}).encode()
    out = []
    for blob in _all_gather_bytes(payload):
        msg = json.loads(blob)
        # RNG states are byte tensors (torch.get_rng_state / torch.cuda.get_rng_state)
        restored = {k: torch.tensor(v, dtype=torch.uint8) for k, v in msg["tensors"].items()}
        out.append(decode_tree(msg["tree"], restored))
    return out


def restore_rng(states: list[dict], ckpt: Path) -> None:
    """Set this process's RNGs to its rank's saved states (rank 0's, with a warning, when it has none)."""
    rank, world = rank_world()
    if len(states) != world:
        warnings.warn(
            f"{ckpt} holds the RNG states of {len(states)} process(es) and this job has {world}: ranks without "
            "their own restore rank 0's, so random streams differ from an uninterrupted run "
            "(save with rng_states=gather_rng_states() on every rank)",
            stacklevel=3,
        )
    snap = states[rank] if rank < len(states) else states[0]
    random.setstate(snap["python"])
    np.random.set_state(snap["numpy"])
    torch.set_rng_state(snap["torch"])
    cuda = snap.get("cuda") or []
    if cuda and torch.cuda.is_available():
        n = min(len(cuda), torch.cuda.device_count())
        if n != len(cuda) or n != torch.cuda.device_count():
            warnings.warn(f"{ckpt}: CUDA RNG states of {len(cuda)} device(s), {n} restored", stacklevel=3)
        for i in range(n):
            torch.cuda.set_rng_state(cuda[i], i)


def _all_gather_bytes(data: bytes) -> list[bytes]:
    world = dist.get_world_size()
    # NCCL moves CUDA tensors only; gloo (CPU jobs) takes CPU tensors
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device or "cpu")
    size = torch.tensor([buf.numel()], device=buf.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=buf.device)
    padded[: buf.numel()] = buf
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return [bytes(p[: int(s.item())].cpu().numpy()) for p, s in zip(parts, sizes)]


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
