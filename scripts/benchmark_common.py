"""What the sections of ``scripts/benchmark.py`` share: size presets, the models, FLOP counts, timing, results.

Every model is random-init and built offline: mmgen's ``CaptionModel`` (timm ViT -> projector -> GPT-2),
transformers' ``VisionEncoderDecoderModel`` (ViT + GPT-2 with cross-attention) and a stock prefix model
(timm ViT -> Linear -> GPT-2 on ``inputs_embeds``), all with the encoder and decoder sizes of one preset.
"""

from __future__ import annotations

import json
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

CAPTION = 32  # caption tokens per training example


@dataclass(frozen=True)
class Size:
    """Encoder and decoder sizes shared by mmgen and its peers."""

    img: int  # image side in pixels
    patch: int  # ViT patch side
    d_vit: int  # ViT width
    n_layer_vit: int
    n_head_vit: int
    d_lm: int  # GPT-2 width
    n_layer_lm: int
    n_head_lm: int
    vocab: int  # GPT-2's vocabulary size (50257) except in the plumbing preset

    @property
    def grid(self) -> int:
        """Patches per image side."""
        return self.img // self.patch


SIZES = {
    # plumbing checks: seconds on a CPU
    "tiny": Size(img=32, patch=8, d_vit=32, n_layer_vit=1, n_head_vit=2, d_lm=32, n_layer_lm=2, n_head_lm=2, vocab=500),
    # ViT-S/16 at 224 + a 6-layer, 384-wide GPT-2
    "small": Size(224, 16, 384, 12, 6, 384, 6, 6, 50257),
    # the scenes preset (configs/scenes_gpu.yaml): 64-pixel images in 8-pixel patches, a 6-block ViT-S-width
    # encoder and a 6-layer, 384-wide GPT-2 with a caption-sized vocabulary: small kernels, the host's pace
    "scenes": Size(64, 8, 384, 6, 6, 384, 6, 6, 128),
    # ViT-B/16 at 224 + GPT-2 124M
    "base": Size(224, 16, 768, 12, 12, 768, 12, 12, 50257),
}


def dummy_tokenizer(vocab_size: int):
    """A fast tokenizer with ``vocab_size`` tokens, the last one ``<|endoftext|>`` (no hub access needed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size - 1)}
    vocab["<|endoftext|>"] = vocab_size - 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    eos = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eos, eos_token=eos, pad_token=eos, unk_token="t0")


NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def _gpt2_sizes(size: Size) -> dict:
    special = {"bos_token_id": size.vocab - 1, "eos_token_id": size.vocab - 1}
    return {"n_embd": size.d_lm, "n_layer": size.n_layer_lm, "n_head": size.n_head_lm, **special, **NO_DROPOUT}


def _timm_sizes(size: Size) -> dict:
    return {
        "img_size": size.img,
        "patch_size": size.patch,
        "embed_dim": size.d_vit,
        "depth": size.n_layer_vit,
        "num_heads": size.n_head_vit,
    }


def mmgen_model(size: Size, projector: str, encoder_freeze: str = "none", decoder_mode: str = "full"):
    """mmgen's ``CaptionModel`` at ``size`` with the given projector kind."""
    from mmgen.config import DecoderConfig, EncoderConfig, ModelConfig, ProjectorConfig, TokenizerConfig
    from mmgen.models import CaptionModel

    vit = _timm_sizes(size)
    cfg = ModelConfig(
        encoder=EncoderConfig(name="vit_base_patch16_224", pretrained=False, freeze=encoder_freeze, **vit),
        projector=ProjectorConfig(kind=projector),
        decoder=DecoderConfig(name="gpt2", pretrained=False, mode=decoder_mode, config_overrides=_gpt2_sizes(size)),
        tokenizer=TokenizerConfig(kind="decoder"),
    )
    return CaptionModel(cfg, dummy_tokenizer(size.vocab))


def ved_model(size: Size):
    """transformers' ``VisionEncoderDecoderModel``: ViT (CLS + patch tokens) + GPT-2 with cross-attention."""
    from transformers import GPT2Config, GPT2LMHeadModel, VisionEncoderDecoderModel, ViTConfig, ViTModel

    vit = ViTConfig(
        image_size=size.img,
        patch_size=size.patch,
        hidden_size=size.d_vit,
        num_hidden_layers=size.n_layer_vit,
        num_attention_heads=size.n_head_vit,
        intermediate_size=4 * size.d_vit,
    )
    enc = ViTModel(vit, add_pooling_layer=False)
    dcfg = GPT2Config(vocab_size=size.vocab, add_cross_attention=True, is_decoder=True, **_gpt2_sizes(size))
    m = VisionEncoderDecoderModel(encoder=enc, decoder=GPT2LMHeadModel(dcfg))
    special = size.vocab - 1
    for config in (m.config, m.generation_config):
        config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = special
    return m


class StockPrefixModel(nn.Module):
    """What a user assembles from stock parts: timm ViT tokens -> Linear -> GPT-2 on inputs_embeds."""

    def __init__(self, size: Size, pool: bool = False):
        super().__init__()
        import timm
        from transformers import GPT2Config, GPT2LMHeadModel

        self.size = size
        self.vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **_timm_sizes(size))
        self.proj = nn.Linear(size.d_vit, size.d_lm)
        self.gpt = GPT2LMHeadModel(GPT2Config(vocab_size=size.vocab, **_gpt2_sizes(size)))
        self.gpt.generation_config.pad_token_id = size.vocab - 1
        self.pool = pool

    def prefix(self, pixel_values):
        x = self.vit.forward_features(pixel_values)[:, 1:]  # (B, g*g, C)
        if self.pool:
            b, n, c = x.shape
            g = self.size.grid
            x = nn.functional.avg_pool2d(x.transpose(1, 2).reshape(b, c, g, g), 2).flatten(2).transpose(1, 2)
        return self.proj(x)

    def prompt(self, pixel_values):
        """Image prefix then the BOS embedding, ``(B, N + 1, D)``."""
        bos = torch.full((pixel_values.shape[0], 1), self.size.vocab - 1, device=pixel_values.device)
        return torch.cat([self.prefix(pixel_values), self.gpt.transformer.wte(bos)], 1)

    def forward(self, pixel_values, input_ids, labels):
        prefix = self.prefix(pixel_values)
        embeds = torch.cat([prefix, self.gpt.transformer.wte(input_ids)], 1)
        full = torch.cat([labels.new_full(prefix.shape[:2], -100), labels], 1)
        return self.gpt(inputs_embeds=embeds, labels=full).loss


def flops_per_image(size: Size, prefix_tokens: int, caption: int = CAPTION, train_encoder: bool = True) -> float:
    """Training FLOPs per image (6 x matmul params x tokens + attention), nanoGPT/PaLM accounting."""
    vit_tokens = size.grid**2 + 1
    vit_params = size.n_layer_vit * 12 * size.d_vit**2
    lm_params = size.n_layer_lm * 12 * size.d_lm**2
    lm_tokens = prefix_tokens + caption
    f = 6 * vit_params * vit_tokens + 12 * size.n_layer_vit * vit_tokens**2 * size.d_vit
    f = f if train_encoder else f / 3  # a frozen encoder runs forward only
    f += 6 * lm_params * lm_tokens + 12 * size.n_layer_lm * lm_tokens**2 * size.d_lm
    f += 6 * size.d_lm * size.vocab * caption  # LM head on caption positions
    return float(f)


# --------------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step: Callable, device: torch.device) -> tuple[float, float, object]:
    """One call of ``step``: (wall seconds, CPU seconds of this process, its result)."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    out = step()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def timed(step: Callable, warmup: int, iters: int, device: torch.device) -> tuple[float, float]:
    """Wall and CPU seconds per call of ``step``, over ``iters`` calls after ``warmup`` ones."""
    for _ in range(warmup):
        step()
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(iters):
        step()
    sync(device)
    return (time.perf_counter() - wall) / iters, (time.process_time() - cpu) / iters


def summarize(samples: list[tuple[float, float]], batch: int) -> dict:
    """Medians of interleaved repeats: images/s (with the slowest and fastest) and CPU-seconds per image."""
    walls = [w for w, _ in samples]
    return {
        "images_per_s": batch / statistics.median(walls),
        "images_per_s_range": [batch / max(walls), batch / min(walls)],
        "cpu_s_per_image": statistics.median(c for _, c in samples) / batch,
        "batch": batch,
        "repeats": len(samples),
    }


def profile(step: Callable, label: str, top: int, device: torch.device, iters: int = 3) -> dict:
    """The costliest operations of ``iters`` calls of ``step`` (already warm): CUDA kernels on a GPU (and how
    busy it was), operators by self CPU time on the CPU."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    sync(device)
    t = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        for _ in range(iters):
            step()
        sync(device)
    wall = (time.perf_counter() - t) / iters
    if cuda:
        events = [e for e in prof.key_averages() if e.device_time_total > 0 and e.device_type.name == "CUDA"]
        cost = {e.key: e.device_time_total for e in events}
    else:
        events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
        cost = {e.key: e.self_cpu_time_total for e in events}
    events.sort(key=lambda e: cost[e.key], reverse=True)
    busy = sum(cost.values()) / iters / 1e6  # seconds of kernel (or operator) time per call
    what = "kernels busy" if cuda else "operators"
    print(f"\n[profile] {label}: {wall * 1e3:.1f} ms per call, {what} {busy * 1e3:.1f} ms ({busy / wall:.0%})")
    for e in events[:top]:
        print(f"  {cost[e.key] / iters / 1e3:8.2f} ms  {e.count // iters:5d}x  {e.key[:110]}")
    return {"profile_wall_ms": wall * 1e3, "profile_busy_ms": busy * 1e3}


# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------


def selected(results: dict, name: str) -> bool:
    """Whether ``--only`` lets the case ``name`` run."""
    only = results.get("_only")
    return not only or any(o.lower() in name.lower() for o in only)


def record(results: dict, section: str, name: str, out: dict) -> None:
    """Store, print and save (``--out``) one case's numbers."""
    results.setdefault(section, {})[name] = out
    shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items() if k != "trace"}
    print(f"[{section}] {name}: {shown}", flush=True)
    if results.get("_out"):
        Path(results["_out"]).write_text(
            json.dumps({k: v for k, v in results.items() if not k.startswith("_")}, indent=2)
        )


class Skip(Exception):
    """A case that cannot run here (a GPU-only lever on the CPU, a package not installed): recorded as skipped."""


def run_case(results: dict, section: str, name: str, fn: Callable[[], dict]) -> None:
    """Run one case (when selected) and record its numbers, its error or why it was skipped: one failing case
    must not lose the others."""
    if not selected(results, name):
        return
    t = time.perf_counter()
    try:
        out = fn()
    except Skip as e:
        out = {"skipped": str(e)}
    except Exception as e:
        out = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
    out["wall_s"] = time.perf_counter() - t
    record(results, section, name, out)
