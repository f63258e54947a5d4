"""How the training step computes on its device: under the precision's autocast and the allowed attention
kernels (:func:`forward_context`), and with the speed levers ``train.loss_impl``, ``train.fp8`` and the CUDA
graphs of ``train.compile_mode: reduce-overhead``.

Each lever is checked against the device before any heavy work (:func:`check_levers`), so a run that asks for a
GPU-only lever on the wrong machine, or without its package, stops at once with a message that says what to do.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mmgen.config import ConfigError, TrainConfig
from mmgen.runtime import bf16_autocast
from mmgen.transformers_glue import sdpa_context

FP8_CAPABILITY = (8, 9)
"""Compute capability of the first GPUs with float8 tensor cores (Ada; Hopper is 9.0)."""


def forward_context(tc: TrainConfig, device: torch.device) -> contextlib.ExitStack:
    """What every training forward runs under (the validation loss's too): the autocast of ``train.precision``
    and the attention kernels of ``train.sdpa_backends``."""
    stack = contextlib.ExitStack()
    stack.enter_context(bf16_autocast(tc.precision, device))
    stack.enter_context(sdpa_context(tc.sdpa_backends))
    return stack


@dataclass
class StepLevers:
    """What the levers change in a training step (:func:`check_levers` builds it from the config and device)."""

    loss_impl: str
    """The loss implementation the forward uses ('plain', 'chunked', 'liger' or 'cce')."""
    fp8: bool
    graphs: bool
    """The compiled step replays CUDA graphs (:func:`replays_graphs`): mark each micro-batch's start."""
    grads_to_none: bool
    """Whether ``zero_grad`` drops the gradients (false: kept buffers zeroed in place, :func:`keep_grad_buffers`)."""
    label_smoothing: float = 0.0

    @property
    def forward_kwargs(self) -> dict:
        """Keywords of the training forward (none for the plain, unsmoothed loss, so its call is unchanged)."""
        kwargs = {} if self.loss_impl == "plain" else {"loss_impl": self.loss_impl}
        if self.label_smoothing:
            kwargs["label_smoothing"] = self.label_smoothing
        return kwargs

    def apply(self, model: nn.Module, log: Callable[[str], None] | None = None) -> None:
        """Prepare the model (before DDP / FSDP wraps it and the optimizer takes its parameters): check that the
        decoder's head suits a fused loss, convert the float8 layers, allocate the kept gradient buffers."""
        if self.loss_impl != "plain":
            model.fused_head(self.loss_impl)  # a decoder whose logits are more than a linear map is refused
        if self.fp8:
            names = convert_fp8(model)
            if log:
                log(f"train.fp8: {len(names)} linear layers train in float8")
        if not self.grads_to_none:
            keep_grad_buffers(model)

    def step_begins(self) -> None:
        """Called before each micro-batch's forward: under CUDA graphs, the previous outputs are done with."""
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()


def check_levers(tc: TrainConfig, device: torch.device, say=None) -> StepLevers:
    """Check the levers ``tc`` asks for against ``device``, before any heavy work; ``say`` (e.g. ``print``) gets one
    line when settings meant for a GPU run on the CPU (:func:`gpu_settings_on_cpu`).

    Raises:
        ConfigError: A lever cannot run here; the message names the key and the package or device it needs.
    """
    note = gpu_settings_on_cpu(tc, device)
    if note and say is not None:
        say(note)
    xe = tc.objective == "xe"  # scst: no cross-entropy
    impl = resolve_loss_impl(tc.loss_impl, device, smoothing=tc.label_smoothing > 0) if xe else "plain"
    if tc.fp8:
        check_fp8(device)
    graphs = replays_graphs(tc)
    # CUDA graphs and accumulation: gradients accumulate into buffers of our own (see keep_grad_buffers)
    grads_to_none = not (graphs and tc.grad_accum > 1)
    return StepLevers(impl, tc.fp8, graphs, grads_to_none, label_smoothing=float(tc.label_smoothing) if xe else 0.0)


def gpu_settings_on_cpu(tc: TrainConfig, device: torch.device) -> str | None:
    """One line saying what settings meant for a GPU (a preset like ``configs/scenes_gpu.yaml``) cost on the CPU,
    or None: ``train.compile`` compiles for minutes before the first step (inside a ``train.max_time`` budget), and
    bf16 autocast is slow on most CPUs."""
    if device.type != "cpu":
        return None
    found = []
    if tc.compile:
        budget = f", inside the train.max_time budget of {tc.max_time:g} s" if tc.max_time else ""
        found.append(f"train.compile=true (torch.compile takes minutes on the CPU before the first step{budget})")
    if tc.precision == "bf16":
        found.append("train.precision=bf16 (bf16 autocast is slow on most CPUs)")
    if not found:
        return None
    return (
        "note: this run is on the CPU, with settings meant for a GPU: "
        + "; ".join(found)
        + (". Override them (train.compile=false train.precision=auto) or use configs/tiny_cpu.yaml")
    )


def resolve_loss_impl(name: str, device: torch.device, smoothing: bool = False) -> str:
    """The loss implementation ``train.loss_impl`` means on ``device``: 'auto' becomes liger or cce where installed
    on a CUDA device (not cce with label ``smoothing``), else plain; 'liger' and 'cce' must be installed and on
    CUDA (Triton kernels).

    Raises:
        ConfigError: 'liger' / 'cce' off CUDA or not installed.
    """
    from mmgen.models.lm_loss import PACKAGES, importable

    cuda = device.type == "cuda"
    if name == "auto":
        usable = [impl for impl in PACKAGES if not (smoothing and impl == "cce")]
        return next((impl for impl in usable if cuda and importable(impl)), "plain")
    if name not in PACKAGES:
        return name
    package = PACKAGES[name][1]
    if not cuda:
        raise ConfigError(
            f"train.loss_impl={name}: {package}'s kernels run on a CUDA GPU and this run is on {device.type}; "
            "use train.loss_impl=chunked (PyTorch, any device) or plain"
        )
    if not importable(name):
        raise ConfigError(
            f"train.loss_impl={name} needs the {package} package: pip install {package} "
            "(or use train.loss_impl=chunked, which needs nothing)"
        )
    return name


def check_fp8(device: torch.device) -> None:
    """Refuse ``train.fp8`` off a CUDA GPU of compute capability >= 8.9, or without torchao.

    Raises:
        ConfigError: The message names the device (and its capability) or the package to install.
    """
    need = f"a CUDA GPU of compute capability >= {FP8_CAPABILITY[0]}.{FP8_CAPABILITY[1]} (Ada, Hopper or newer)"
    if device.type != "cuda":
        raise ConfigError(f"train.fp8: float8 matrix multiplies need {need}; this run is on {device.type}")
    cap = torch.cuda.get_device_capability(device)
    if cap < FP8_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        raise ConfigError(f"train.fp8: float8 matrix multiplies need {need}; {name} is {cap[0]}.{cap[1]}")
    if importlib.util.find_spec("torchao") is None:
        raise ConfigError("train.fp8 needs the torchao package: pip install torchao")


def fp8_module_filter(model: nn.Module) -> Callable[[nn.Module, str], bool]:
    """The layers of a ``CaptionModel`` that float8 training converts, as torchao's ``module_filter_fn``.

    Plain ``nn.Linear`` layers whose input and output sizes are multiples of 16 (what the float8 matrix multiply
    needs), except the LM head and the projector: as torchao recommends, the first and last layers between the
    model's parts keep their precision (the head's 50,257-wide output is also not a multiple of 16). Subclasses
    (MultiheadAttention's output projection, already quantised layers) are left alone.
    """
    from mmgen.transformers_glue import base_model

    keep_precision = {id(base_model(model.decoder).get_output_embeddings())}
    keep_precision |= {id(m) for m in model.projector.modules()}

    def convert(module: nn.Module, fqn: str) -> bool:
        return (
            type(module) is nn.Linear
            and id(module) not in keep_precision
            and module.in_features % 16 == 0
            and module.out_features % 16 == 0
        )

    return convert


def convert_fp8(model: nn.Module) -> list[str]:
    """Swap the layers :func:`fp8_module_filter` selects for torchao's ``Float8Linear`` (in place; their weights
    and state-dict names stay the same, so checkpoints load into a plain model); returns their names."""
    from torchao.float8 import convert_to_float8_training

    selected = fp8_module_filter(model)
    names = [name for name, module in model.named_modules() if selected(module, name)]
    convert_to_float8_training(model, module_filter_fn=selected)
    return names


def replays_graphs(tc: TrainConfig) -> bool:
    """Whether the compiled step replays CUDA graphs (``compile_mode: reduce-overhead``). On the CPU torch compiles
    the same step without graphs; the trainer's bookkeeping for them runs there too (and changes no number)."""
    return tc.compile and tc.compile_mode == "reduce-overhead"


def keep_grad_buffers(model: nn.Module) -> None:
    """Give every trainable parameter a zeroed ``.grad`` of its own, to be zeroed in place from then on.

    Under CUDA graphs the backward's gradients live in the graph's memory pool and are overwritten by the next
    replay; accumulating micro-batches into them (``train.grad_accum`` > 1) would read overwritten memory.
    Gradients accumulated into buffers allocated outside the graphs stay valid.
    """
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)
