"""int8 CPU inference: PyTorch's dynamic quantisation of the encoder's and decoder's linear layers.

>>> captioner = Captioner.from_pretrained("runs/coco/final", device="cpu", quantize="int8")

Weights of every ``nn.Linear`` in the encoder and the decoder (GPT-2's ``Conv1D`` layers are first
turned into the equivalent ``nn.Linear``) are stored as int8 with one scale per output channel;
activations are quantised on the fly at each matrix product. The decoder's output layer (LM head), the
embeddings, layer norms, the patch convolution and the small projector stay in fp32: the next token is
chosen from the LM head's output, and on the shipped model quantising it (or using one scale per
tensor) changed several times more captions than it saved time (see BENCHMARKS.md). Quantising takes
well under a second, so there is no separate export format: a saved fp32 model is quantised when it is
loaded.

The result runs on the CPU only (the quantised kernels are fbgemm/oneDNN/qnnpack) and is meant for
inference: it cannot be trained or saved with ``save_pretrained``. How much faster it is, and how
often its captions equal fp32's, is measured in BENCHMARKS.md.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

QUANTIZE_CHOICES = ("int8",)


def _conv1d_to_linear(module: nn.Module) -> int:
    """Replace transformers' ``Conv1D`` (GPT-2's ``x @ W + b``, W of shape (in, out)) by the equal
    ``nn.Linear`` everywhere below ``module``; returns how many were replaced."""
    from transformers.pytorch_utils import Conv1D

    replaced = 0
    for name, child in module.named_children():
        if isinstance(child, Conv1D):
            n_in, n_out = child.weight.shape
            linear = nn.Linear(n_in, n_out, bias=child.bias is not None, dtype=child.weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(child.weight.t())
                if child.bias is not None:
                    linear.bias.copy_(child.bias)
            setattr(module, name, linear)
            replaced += 1
        else:
            replaced += _conv1d_to_linear(child)
    return replaced


def _dynamic_int8(module: nn.Module, skip: tuple[nn.Module, ...] = ()) -> nn.Module:
    """``torch.ao.quantization.quantize_dynamic`` of the module's ``nn.Linear`` layers but ``skip``, in place,
    with per-output-channel weight scales."""
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as e:  # pragma: no cover - a torch without the eager-mode quantisation API
        raise RuntimeError(
            f"this torch ({torch.__version__}) has no torch.ao.quantization.quantize_dynamic; int8 needs it"
        ) from e
    with warnings.catch_warnings():
        # torch announces the move of this API to torchao; it is still the one shipped with torch
        warnings.filterwarnings("ignore", message=r".*torchao.*")
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        spec = {
            name: per_channel_dynamic_qconfig
            for name, sub in module.named_modules()
            if isinstance(sub, nn.Linear) and not any(sub is k for k in skip)
        }
        return quantize_dynamic(module, spec, dtype=torch.qint8, inplace=True)


PARTS = ("encoder", "decoder", "lm_head")
"""What :func:`quantize_int8` can quantise: the encoder's and the decoder's linear layers, and the LM head."""


def quantize_int8(model: nn.Module, parts: tuple[str, ...] = ("encoder", "decoder")) -> nn.Module:
    """Quantise a ``CaptionModel``'s encoder and decoder linear layers to int8, in place, for CPU inference.

    The LM head stays in fp32 unless ``parts`` names it. A LoRA-wrapped decoder is merged first. The model is put in
    eval mode.

    Args:
        model: A ``CaptionModel`` with fp32 weights on the CPU.
        parts: Which of :data:`PARTS` to quantise (the default is what ``quantize="int8"`` does; the others are
            there to measure, see ``scripts/int8_benchmark.py --parts``).

    Returns:
        The same model object.

    Raises:
        ValueError: the model is not on the CPU or not in fp32 (the message says what to change).
    """
    param = next(model.parameters())
    if param.device.type != "cpu":
        raise ValueError(f"int8 quantisation runs on the CPU only; the model is on {param.device} (use device='cpu')")
    if param.dtype != torch.float32:
        raise ValueError(f"int8 quantisation starts from fp32 weights; the model is in {param.dtype} (use dtype=None)")
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; choose from {PARTS}")
    model.eval()
    if hasattr(model.decoder, "merge_and_unload"):  # peft: fold the LoRA update into the base weights
        model.decoder = model.decoder.merge_and_unload()
    _conv1d_to_linear(model.decoder)
    if "encoder" in parts:
        _dynamic_int8(model.encoder)
    head = model.decoder.get_output_embeddings()
    if "decoder" in parts:
        _dynamic_int8(model.decoder, skip=(head,))
    if "lm_head" in parts:
        _dynamic_int8(model.decoder, skip=tuple(m for m in model.decoder.modules() if m is not head))
    model.quantized = "int8"
    return model


def is_quantized(model: nn.Module) -> bool:
    """Whether :func:`quantize_int8` was applied to ``model``."""
    return getattr(model, "quantized", None) == "int8"
