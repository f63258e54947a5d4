"""The LM head's cross-entropy without the whole ``(tokens, vocabulary)`` logits tensor (``train.loss_impl``).

The plain path (:func:`caption_loss`) computes the logits of every text position, then
the mean cross-entropy over the labelled ones; with GPT-2's 50,257 tokens that is the largest activation of a
training step (and its fp32 copy and gradient). The implementations here take the decoder's final hidden
states and the head's weight instead, and compute the same mean over the positions whose label is not -100:

- ``chunked``: pure PyTorch, any device. The positions are taken a chunk at a time: the chunk's logits (in the
  matmul dtype autocast would use, soft-maxed in fp32), its loss, and at once its share of the gradients of
  the hidden states and of the head's weight (accumulated in fp32), so no more than one chunk of logits ever
  exists and backward only scales the stored gradients: the same three matrix products as the plain path.
- ``liger``: liger-kernel's fused linear cross-entropy (Triton, CUDA only).
- ``cce``: Apple's cut-cross-entropy (Triton, CUDA only; no head bias).

Tied embeddings need nothing special: the weight passed in is the shared parameter, so its gradient from the
loss adds to the one from the embedding lookup.
"""

from __future__ import annotations

import importlib.util
import inspect

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
FUSED = ("chunked", "liger", "cce")
"""The ``train.loss_impl`` values that compute the loss from hidden states (``plain`` computes logits)."""
PACKAGES = {"liger": ("liger_kernel", "liger-kernel"), "cce": ("cut_cross_entropy", "cut-cross-entropy")}
"""Kernel-library implementations: (module to import, package to install)."""


def importable(impl: str) -> bool:
    """Whether the package of a kernel-library implementation (``liger`` / ``cce``) is installed."""
    return importlib.util.find_spec(PACKAGES[impl][0]) is not None


def chunk_rows(vocab: int) -> int:
    """Positions per chunk of ``chunked``: about 2**26 logits (256 MB in fp32) whatever the vocabulary, in
    multiples of 64, at least 64 (1,280 rows for GPT-2's vocabulary)."""
    return max(64, (1 << 26) // vocab // 64 * 64)


def matmul_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the plain head's matmul runs in: autocast's where it is on, else the weight's."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T + bias`` over the labelled rows, a chunk of rows at a time;
    the gradients are computed in forward (one chunk's logits at a time) and scaled in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk, dtype, need_hidden, need_weight, need_bias, smoothing):
        # hidden (N, D), weight (V, D), bias (V,) or None, labels (N,); smoothing: the label smoothing epsilon
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            b = None if bias is None else bias.to(dtype)
            valid = labels != IGNORE_INDEX  # (N,)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty_like(hidden) if need_hidden else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
            grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
            for start in range(0, hidden.shape[0], chunk):
                h = hidden[start : start + chunk].to(dtype)  # (c, D)
                ok = valid[start : start + chunk]  # (c,)
                target = labels[start : start + chunk].clamp_min(0).unsqueeze(1)  # (c, 1); ignored rows masked below
                logits = h @ w.t() if b is None else torch.addmm(b, h, w.t())  # (c, V)
                logits = logits.float()
                lse = torch.logsumexp(logits, dim=1)  # (c,)
                # (1 - eps) * (lse - z_target) + eps * (lse - mean z): cross-entropy against the smoothed target
                row = lse - (1.0 - smoothing) * logits.gather(1, target).squeeze(1)
                if smoothing:
                    row = row - smoothing * logits.mean(1)
                total += (row * ok).sum()
                if not (need_hidden or need_weight or need_bias):
                    continue
                g = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place of the logits (c, V)
                if smoothing:
                    g.sub_(smoothing / logits.shape[1])  # minus the smoothed target's uniform part
                hit = torch.full_like(lse, smoothing - 1.0).unsqueeze(1)
                g.scatter_add_(1, target, hit)  # minus its (1 - eps) on the target
                g.mul_(ok.unsqueeze(1))  # ignored rows contribute nothing
                gd = g.to(dtype)
                if need_hidden:
                    grad_h[start : start + chunk] = gd @ w  # (c, D)
                if need_weight:
                    grad_w += (gd.t() @ h).float()  # (V, D)
                if need_bias:
                    grad_b += g.sum(0)
            count = valid.sum()  # a tensor: no host sync; 0 gives 0 / 0 = nan, as the plain mean does
        ctx.save_for_backward(grad_h, grad_w, grad_b, count)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total / count

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b, count = ctx.saved_tensors
        scale = (grad_out / count).float()
        dh, dw, db = ctx.dtypes
        out_h = None if grad_h is None else (grad_h.float() * scale).to(dh)
        out_w = None if grad_w is None else (grad_w * scale).to(dw)
        out_b = None if grad_b is None else (grad_b * scale).to(db)
        return out_h, out_w, out_b, None, None, None, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    labels: torch.Tensor,
    impl: str = "chunked",
    chunk: int | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy of the logits ``hidden @ weight.T + bias`` against ``labels``, over the positions
    whose label is not -100, without the full logits tensor.

    Args:
        hidden: Final hidden states (..., D); ``labels[i]`` is the target of ``hidden[i]`` (already shifted).
        weight: The LM head's weight (V, D) (the embedding matrix when they are tied).
        bias: The head's bias (V,) or None.
        labels: Target ids (...), -100 where no loss is taken.
        impl: 'chunked' (PyTorch), 'liger' or 'cce' (their CUDA kernels; the package must be installed).
        chunk: Positions per chunk of 'chunked' (default :func:`chunk_rows` of the vocabulary).
        label_smoothing: Epsilon of label smoothing, as ``F.cross_entropy``'s (not with 'cce').

    Returns:
        The fp32 scalar loss; the matmul runs in the dtype the plain head would use (autocast's, else the weight's).
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])  # (N, D)
    labels = labels.reshape(-1)  # (N,)
    dtype = matmul_dtype(hidden, weight)
    if impl == "chunked":
        grad = torch.is_grad_enabled()
        needs = (grad and hidden.requires_grad, grad and weight.requires_grad)
        need_bias = grad and bias is not None and bias.requires_grad
        rows = chunk or chunk_rows(weight.shape[0])
        eps = float(label_smoothing)
        return _ChunkedLinearCrossEntropy.apply(hidden, weight, bias, labels, rows, dtype, *needs, need_bias, eps)
    if impl == "liger":
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy as liger

        b = None if bias is None else bias.to(dtype)
        # the weight's gradient accumulates over liger's chunks in fp32 where this release lets us say so
        accum = {"accum_dtype": torch.float32} if "accum_dtype" in inspect.signature(liger).parameters else {}
        if label_smoothing:
            accum["label_smoothing"] = float(label_smoothing)
        loss = liger(hidden.to(dtype), weight.to(dtype), labels, bias=b, ignore_index=IGNORE_INDEX, **accum)
        return loss.float()
    if impl == "cce":
        from cut_cross_entropy import linear_cross_entropy as cce

        if bias is not None:
            raise ValueError("train.loss_impl=cce: cut-cross-entropy takes no head bias; use liger or chunked")
        if label_smoothing:
            raise ValueError("train.loss_impl=cce has no label smoothing; use liger or chunked")
        return cce(hidden.to(dtype), weight.to(dtype), labels, ignore_index=IGNORE_INDEX, reduction="mean").float()
    raise ValueError(f"train.loss_impl={impl!r}: expected one of {', '.join(FUSED)}")


def caption_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of ``logits[:, t]`` against ``labels[:, t + 1]`` over the labelled positions (against
    targets smoothed by ``label_smoothing``: ``1 - eps`` on the label, ``eps`` spread evenly over the vocabulary)."""
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
        label_smoothing=float(label_smoothing),
    )
