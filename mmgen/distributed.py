"""torchrun integration: one code path for 1 CPU process, 1 GPU, N GPUs and N nodes.

Processes are started by ``torchrun`` (see ``scripts/train.sh``); this module only reads the
environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and wraps the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistState:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was wrapped by FSDP2's ``fully_shard``."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(model, FSDPModule)


def init_distributed(device: str | None = None) -> DistState:
    """Initialise the process group when launched by torchrun with WORLD_SIZE > 1 (NCCL on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return DistState(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _on_backend_device(t: torch.Tensor) -> torch.Tensor:
    # NCCL reduces CUDA tensors only
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        return t.to(torch.device("cuda", torch.cuda.current_device()))
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a new tensor on ``t``'s device); ``t`` itself in a single process."""
    if dist.is_available() and dist.is_initialized():
        x = _on_backend_device(t.clone())
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x.to(t.device)
    return t


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s value of ``t`` on every rank (a new tensor); ``t`` itself in a single process."""
    if dist.is_available() and dist.is_initialized():
        x = _on_backend_device(t.clone())
        dist.broadcast(x, src=src)
        return x.to(t.device)
    return t


def wrap_model(model: nn.Module, state: DistState, mode: str = "ddp") -> nn.Module:
    """DDP (default) or FSDP2 (``fully_shard`` per decoder block, for large decoders); unchanged when single-process."""
    if not state.distributed:
        return model
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        from mmgen.transformers_glue import base_model

        dec = base_model(model.decoder)
        layers = _decoder_layers(dec)
        for layer in layers:
            fully_shard(layer)
        fully_shard(model)
        return model
    ids = [state.local_rank] if state.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=False)


def _decoder_layers(decoder: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks of a transformers causal LM (an nn.ModuleList of the most children)."""
    best: list[nn.Module] = []
    for m in decoder.modules():
        if isinstance(m, nn.ModuleList) and len(m) > len(best):
            best = list(m)
    if not best:
        raise ValueError("train.distributed=fsdp: no block list found in the decoder")
    return best


def unwrap(model: nn.Module) -> nn.Module:
    """The CaptionModel inside DDP / torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# -- FSDP: full (unsharded) states for saving, evaluating and resuming ---------------------------------


def full_model_state(model: nn.Module) -> dict:
    """The whole model's tensors, unsharded, on the CPU of rank 0 (``{}`` on the others). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state keyed by parameter names, unsharded, on rank 0's CPU. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_states(model: nn.Module, optimizer: torch.optim.Optimizer | None, model_state: dict, optim_state) -> None:
    """Shard full model (and optimizer) states, read by every rank, into an FSDP model. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=options)
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, optim_state, options=options)
