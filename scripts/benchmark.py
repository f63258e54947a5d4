"""GPU benchmark: mmgen side by side with transformers peers on identical sizes.

ViT-B/16 at 224 + GPT-2 124M, random init, bf16. Training images/s at batch 128 with 32 caption
tokens (mmgen with the 2x2-pooling and the plain mlp projector, transformers' VisionEncoderDecoder
with cross-attention, a stock prefix model: timm ViT -> Linear -> GPT-2 on ``inputs_embeds``), stage-1
training from cached features, captioning images/s for greedy / beam 3 / beam 5 with 20 new tokens
forced, peak memory and model FLOPs utilisation. Inputs are synthetic tensors already on the GPU, so
the numbers measure the model step, not data loading.

    python scripts/benchmark.py --out bench.json                 # everything
    python scripts/benchmark.py --sections train caption --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn

PEAK_TFLOPS = 800.0  # H100 SXM bf16 dense, measured with an 8192^3 matmul on the benchmark machine
VOCAB, D_LM, N_LAYER_LM = 50257, 768, 12
IMG, PATCH, D_VIT, N_LAYER_VIT = 224, 16, 768, 12
CAPTION = 32


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------


def dummy_tokenizer(vocab_size: int = VOCAB):
    """A fast tokenizer with GPT-2's vocabulary size (no hub access needed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size - 1)}
    vocab["<|endoftext|>"] = vocab_size - 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    eos = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eos, eos_token=eos, pad_token=eos, unk_token="t0")


def mmgen_model(projector: str, encoder_freeze: str = "none", decoder_mode: str = "full"):
    from mmgen.config import DecoderConfig, EncoderConfig, ModelConfig, ProjectorConfig, TokenizerConfig
    from mmgen.models import CaptionModel

    cfg = ModelConfig(
        encoder=EncoderConfig(name="vit_base_patch16_224", pretrained=False, freeze=encoder_freeze),
        projector=ProjectorConfig(kind=projector),
        decoder=DecoderConfig(
            name="gpt2",
            pretrained=False,
            mode=decoder_mode,
            config_overrides={"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
        ),
        tokenizer=TokenizerConfig(kind="decoder"),
    )
    return CaptionModel(cfg, dummy_tokenizer())


def ved_model():
    from transformers import GPT2Config, GPT2LMHeadModel, VisionEncoderDecoderModel, ViTConfig, ViTModel

    enc = ViTModel(ViTConfig(image_size=IMG, patch_size=PATCH), add_pooling_layer=False)
    dcfg = GPT2Config(add_cross_attention=True, is_decoder=True, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    dec = GPT2LMHeadModel(dcfg)
    m = VisionEncoderDecoderModel(encoder=enc, decoder=dec)
    m.config.decoder_start_token_id = VOCAB - 1
    m.config.pad_token_id = VOCAB - 1
    m.config.eos_token_id = VOCAB - 1
    m.generation_config.decoder_start_token_id = VOCAB - 1
    m.generation_config.pad_token_id = VOCAB - 1
    m.generation_config.eos_token_id = VOCAB - 1
    return m


class StockPrefixModel(nn.Module):
    """What a user assembles from stock parts: timm ViT tokens -> Linear -> GPT-2 on inputs_embeds."""

    def __init__(self, pool: bool = False):
        super().__init__()
        import timm
        from transformers import GPT2Config, GPT2LMHeadModel

        self.vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
        self.proj = nn.Linear(D_VIT, D_LM)
        self.gpt = GPT2LMHeadModel(GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
        self.gpt.generation_config.pad_token_id = VOCAB - 1
        self.pool = pool

    def prefix(self, pixel_values):
        x = self.vit.forward_features(pixel_values)[:, 1:]  # (B, 196, C)
        if self.pool:
            b, n, c = x.shape
            x = nn.functional.avg_pool2d(x.transpose(1, 2).reshape(b, c, 14, 14), 2).flatten(2).transpose(1, 2)
        return self.proj(x)

    def forward(self, pixel_values, input_ids, labels):
        prefix = self.prefix(pixel_values)
        embeds = torch.cat([prefix, self.gpt.transformer.wte(input_ids)], 1)
        full = torch.cat([labels.new_full(prefix.shape[:2], -100), labels], 1)
        return self.gpt(inputs_embeds=embeds, labels=full).loss


# --------------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------------


def flops_per_image(prefix_tokens: int, caption: int = CAPTION, train_encoder: bool = True) -> float:
    """Training FLOPs per image (6 x matmul params x tokens + attention), nanoGPT/PaLM accounting."""
    vit_tokens = (IMG // PATCH) ** 2 + 1
    vit_params = N_LAYER_VIT * 12 * D_VIT**2
    lm_params = N_LAYER_LM * 12 * D_LM**2
    lm_tokens = prefix_tokens + caption
    f = 6 * vit_params * vit_tokens + 12 * N_LAYER_VIT * vit_tokens**2 * D_VIT
    f = f if train_encoder else f / 3  # a frozen encoder runs forward only
    f += 6 * lm_params * lm_tokens + 12 * N_LAYER_LM * lm_tokens**2 * D_LM
    f += 6 * D_LM * VOCAB * caption  # LM head on caption positions
    return float(f)


# --------------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------------


def timed(step, warmup: int, iters: int) -> float:
    """Seconds per call of ``step`` (CUDA-synchronised)."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters


def profile(step, label: str, top: int, iters: int = 3) -> dict:
    """Top CUDA kernels of ``iters`` calls of ``step`` (already warm), and how busy the GPU was."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.cuda.synchronize()
    t = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
    wall = (time.perf_counter() - t) / iters
    events = [e for e in prof.key_averages() if e.device_time_total > 0 and e.device_type.name == "CUDA"]
    events.sort(key=lambda e: e.device_time_total, reverse=True)
    busy = sum(e.device_time_total for e in events) / iters / 1e6  # seconds of kernel time per call
    print(f"\n[profile] {label}: {wall * 1e3:.1f} ms per call, kernels busy {busy * 1e3:.1f} ms ({busy / wall:.0%})")
    for e in events[:top]:
        print(f"  {e.device_time_total / iters / 1e3:8.2f} ms  {e.count // iters:5d}x  {e.key[:110]}")
    return {"profile_wall_ms": wall * 1e3, "profile_busy_ms": busy * 1e3}


def batch(b: int, device, caption: int = CAPTION):
    px = torch.randn(b, 3, IMG, IMG, device=device)
    ids = torch.randint(0, VOCAB - 1, (b, caption), device=device)
    ids[:, 0] = VOCAB - 1
    labels = ids.clone()
    labels[:, 0] = -100
    return px, ids, torch.ones_like(ids), labels


def train_step_fn(
    kind, model, b: int, device, compile_model: bool, with_mask=False, sdpa=("flash", "math"), compile_mode="default"
):
    px, ids, mask, labels = batch(b, device)
    mask = mask if with_mask else None  # right-padded batches need no mask in a causal decoder (what mmgen trains with)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    fwd = torch.compile(model, mode=compile_mode) if compile_model else model

    if kind == "mmgen":
        feats = None

        def loss_fn():
            return fwd(pixel_values=px, input_ids=ids, attention_mask=mask, labels=labels).loss
    elif kind == "mmgen_features":
        feats = torch.randn(b, (IMG // PATCH) ** 2, D_VIT, device=device, dtype=torch.bfloat16)

        def loss_fn():
            return fwd(features=feats, input_ids=ids, attention_mask=mask, labels=labels).loss
    elif kind == "ved":

        def loss_fn():
            return fwd(pixel_values=px, decoder_input_ids=ids, labels=labels).loss
    else:

        def loss_fn():
            return fwd(px, ids, labels)

    from contextlib import nullcontext

    from mmgen.attention import sdpa_context

    def step():
        # the peers run with PyTorch's default attention kernels, mmgen with train.sdpa_backends' choice
        kernels = sdpa_context(sdpa) if kind.startswith("mmgen") else nullcontext()
        with torch.autocast("cuda", dtype=torch.bfloat16), kernels:
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_train(args, device, results):
    b = args.train_batch
    cases = [
        ("mmgen pool (49 tok)", "mmgen", lambda: mmgen_model("pool"), 49, False),
        ("mmgen pool (49 tok) + compile", "mmgen", lambda: mmgen_model("pool"), 49, True),
        ("mmgen mlp (196 tok) + compile", "mmgen", lambda: mmgen_model("mlp"), 196, True),
        ("VisionEncoderDecoder (cross-attn)", "ved", ved_model, 0, False),
        ("stock prefix (196 tok)", "stock", lambda: StockPrefixModel(pool=False), 196, False),
        ("stock prefix pooled (49 tok) + compile", "stock", lambda: StockPrefixModel(pool=True), 49, True),
    ]
    if args.quick:
        cases = [c for c in cases if "compile" not in c[0] or c[0].startswith("mmgen pool")]
    for name, kind, build, prefix, comp in cases:
        _run_case(
            results, "train", name, lambda k=kind, f=build, n=prefix, c=comp: _train_case(k, f, n, c, b, device, args)
        )
    # stage 1: frozen ViT + GPT-2, projector only, from cached features
    for comp in (False, True):
        name = "mmgen stage 1 cached features" + (" + compile" if comp else "")
        _run_case(
            results,
            "train",
            name,
            lambda c=comp: _train_case(
                "mmgen_features",
                lambda: mmgen_model("pool", "all", "frozen"),
                49,
                c,
                args.stage1_batch,
                device,
                args,
                train_encoder=False,
            ),
        )


def _train_case(kind, build, prefix, comp, b, device, args, train_encoder=True):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = build().to(device).train()
    step = train_step_fn(
        kind, model, b, device, comp, with_mask=args.with_mask, sdpa=args.sdpa, compile_mode=args.compile_mode
    )
    sec = timed(step, warmup=args.warmup + (3 if comp else 0), iters=args.iters)
    ips = b / sec
    out = {"images_per_s": ips, "batch": b, "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30}
    if args.profile:
        out.update(profile(step, f"train {kind} batch {b}{' compiled' if comp else ''}", args.profile))
    if kind != "ved" and train_encoder:
        out["mfu"] = ips * flops_per_image(prefix) / (PEAK_TFLOPS * 1e12)
        out["gflop_per_image"] = flops_per_image(prefix) / 1e9
    del model, step
    return out


# --------------------------------------------------------------------------------------------------
# captioning
# --------------------------------------------------------------------------------------------------


def bench_caption(args, device, results):
    from mmgen.config import GenerationConfig

    model = mmgen_model("pool").to(device, torch.bfloat16).eval()
    for beams in (1, 3, 5):
        gen = GenerationConfig(num_beams=beams, max_new_tokens=20, min_new_tokens=20, early_stopping=True)
        for b in sorted({64, *args.caption_batches}):
            px = torch.randn(b, 3, IMG, IMG, device=device, dtype=torch.bfloat16)
            name = f"mmgen {'greedy' if beams == 1 else f'beam {beams}'} b{b}"
            _run_case(
                results,
                "caption",
                name,
                lambda px=px, gen=gen, b=b, m=model, name=name: _caption_case(m, px, gen, b, name, args),
            )
    del model
    ved = ved_model().to(device, torch.bfloat16).eval()
    stock = StockPrefixModel(pool=True).to(device, torch.bfloat16).eval()
    for beams in (1, 3, 5):
        kw = {"num_beams": beams, "max_new_tokens": 20, "min_new_tokens": 20, "do_sample": False}
        px = torch.randn(64, 3, IMG, IMG, device=device, dtype=torch.bfloat16)
        label = "greedy" if beams == 1 else f"beam {beams}"

        def run_ved(px=px, kw=kw):
            with torch.no_grad():
                ved.generate(pixel_values=px, **kw)

        def run_stock(px=px, kw=kw):
            with torch.no_grad():
                emb = torch.cat(
                    [
                        stock.prefix(px),
                        stock.gpt.transformer.wte(torch.full((px.shape[0], 1), VOCAB - 1, device=device)),
                    ],
                    1,
                )
                stock.gpt.generate(
                    inputs_embeds=emb, attention_mask=torch.ones(emb.shape[:2], device=device, dtype=torch.long), **kw
                )

        _run_case(
            results,
            "caption",
            f"VisionEncoderDecoder generate {label} b64",
            lambda f=run_ved: {"images_per_s": 64 / timed(f, 1, max(1, args.caption_iters // 2)), "batch": 64},
        )
        _run_case(
            results,
            "caption",
            f"stock prefix generate {label} b64",
            lambda f=run_stock: {"images_per_s": 64 / timed(f, 1, max(1, args.caption_iters // 2)), "batch": 64},
        )


def _caption_case(model, px, gen, b, name, args) -> dict:
    from mmgen.generation import generate_captions

    def run():
        return generate_captions(model, px, gen)

    out = {"images_per_s": b / timed(run, args.warmup, args.caption_iters), "batch": b}
    with torch.no_grad():
        out["encoder_ms"] = 1e3 * timed(lambda: model.encode_images(px), 1, args.caption_iters)
    if args.profile:
        out.update(profile(run, name, args.profile, iters=2))
    return out


def _run_case(results, section, name, fn):
    only = results.get("_only")
    if only and not any(o.lower() in name.lower() for o in only):
        return
    t = time.perf_counter()
    try:
        out = fn()
    except Exception as e:  # keep going: one failing case must not lose the others
        out = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
    out["wall_s"] = time.perf_counter() - t
    results.setdefault(section, {})[name] = out
    shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items() if k != "trace"}
    print(f"[{section}] {name}: {shown}", flush=True)
    if results.get("_out"):
        Path(results["_out"]).write_text(
            json.dumps({k: v for k, v in results.items() if not k.startswith("_")}, indent=2)
        )


def print_table(results):
    def ratio(section, name, ref):
        a = results.get(section, {}).get(name, {}).get("images_per_s")
        b = results.get(section, {}).get(ref, {}).get("images_per_s")
        return f"{a / b:.2f}x" if a and b else "-"

    ref_train = "VisionEncoderDecoder (cross-attn)"
    print(f"\n{'training (batch 128)':<46} {'img/s':>9} {'MFU':>6} {'mem GB':>7} {'vs VED':>7}")
    for name, r in results.get("train", {}).items():
        ips = r.get("images_per_s", float("nan"))
        mfu = r.get("mfu")
        print(
            f"{name:<46} {ips:>9.0f} {(f'{mfu:.0%}' if mfu else '-'):>6} {r.get('peak_mem_gb', float('nan')):>7.1f} "
            f"{ratio('train', name, ref_train):>7}"
        )
    print(f"\n{'captioning (20 new tokens)':<46} {'img/s':>9} {'vs VED':>7} {'vs stock':>8}")
    for name, r in results.get("caption", {}).items():
        label = name.split(" b")[0].replace("mmgen ", "")
        ved = f"VisionEncoderDecoder generate {label} b64"
        stock = f"stock prefix generate {label} b64"
        print(
            f"{name:<46} {r.get('images_per_s', float('nan')):>9.0f} {ratio('caption', name, ved):>7} "
            f"{ratio('caption', name, stock):>8}"
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", default=["train", "caption"], choices=["train", "caption"])
    p.add_argument("--out", default="benchmark.json")
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--stage1-batch", type=int, default=512)
    p.add_argument("--caption-batches", type=int, nargs="+", default=[64, 256, 512, 768])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--caption-iters", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="skip the slower compiled peers")
    p.add_argument("--only", nargs="+", help="run only the cases whose name contains one of these words")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print the N costliest CUDA kernels per case")
    p.add_argument("--with-mask", action="store_true", help="pass an all-ones attention mask in the training cases")
    p.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "max-autotune-no-cudagraphs"],
        help="torch.compile mode of the compiled cases (train.compile_mode)",
    )
    p.add_argument(
        "--sdpa",
        nargs="+",
        default=["flash", "efficient", "math"],
        help="attention kernels mmgen's training cases may use (train.sdpa_backends)",
    )
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmark.py needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = torch.device("cuda")
    results: dict = {
        "_out": args.out,
        "_only": args.only,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "args": vars(args),
    }
    import transformers

    results["transformers"] = transformers.__version__
    if "train" in args.sections:
        bench_train(args, device, results)
    if "caption" in args.sections:
        bench_caption(args, device, results)
    print_table(results)
    Path(args.out).write_text(json.dumps({k: v for k, v in results.items() if not k.startswith("_")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
