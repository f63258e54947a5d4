"""Speed benchmark: mmgen side by side with transformers peers on identical sizes, on a GPU or on the CPU.

Size presets (``--size``): ``base`` = ViT-B/16 at 224 + GPT-2 124M (the default on a GPU), ``small`` =
ViT-S/16 at 224 + a 6-layer, 384-wide GPT-2 (the default on the CPU), ``scenes`` = the scenes preset's sizes
(64-pixel images, 6 + 6 layers 384 wide), ``tiny`` = a few-thousand-parameter pair for checking the plumbing.
All random init; bf16 on a GPU, fp32 on the CPU (``--dtype``).

Sections: ``train`` (a GPU's default with ``caption``): training images/s at ``--train-batch`` with 32
caption tokens (mmgen with the 2x2-pooling and the plain mlp projector, transformers' VisionEncoderDecoder
with cross-attention, a stock prefix model: timm ViT -> Linear -> GPT-2 on ``inputs_embeds``), stage-1
training from cached features, peak memory and model FLOPs utilisation (compiled cases on a GPU only).
``--levers`` adds mmgen rows with the training levers: ``train.loss_impl`` chunked / liger / cce, ``train.fp8``
and ``train.compile_mode=reduce-overhead`` (a lever that cannot run here is recorded as skipped, with why).
``caption`` (see ``benchmark_caption.py``): captioning images/s and CPU-seconds per image for greedy / beam
3 / beam 5 with 20 new tokens forced, mmgen and its peers taking turns on the same images. Inputs are
synthetic tensors already on the device, so the numbers measure the model, not data loading.

    python scripts/benchmark.py --out bench.json                 # GPU: everything
    python scripts/benchmark.py --sections train caption --quick
    python scripts/benchmark.py --device cpu --size small --threads 1 --caption-batches 8 32 --repeats 5
    python scripts/benchmark.py --sections train --levers liger fp8 --only "pool (49 tok) + compile"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from benchmark_caption import bench_caption, caption_table
from benchmark_common import (
    CAPTION,
    SIZES,
    Size,
    Skip,
    StockPrefixModel,
    flops_per_image,
    mmgen_model,
    profile,
    run_case,
    timed,
    ved_model,
)

PEAK_TFLOPS = 800.0  # H100 SXM bf16 dense, measured with an 8192^3 matmul on the benchmark machine


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------


def batch(size: Size, b: int, device, caption: int = CAPTION):
    px = torch.randn(b, 3, size.img, size.img, device=device)
    ids = torch.randint(0, size.vocab - 1, (b, caption), device=device)
    ids[:, 0] = size.vocab - 1
    labels = ids.clone()
    labels[:, 0] = -100
    return px, ids, torch.ones_like(ids), labels


def _loss_fn(kind: str, fwd, size: Size, b: int, device, with_mask: bool, loss_impl: str = "plain"):
    px, ids, mask, labels = batch(size, b, device)
    mask = mask if with_mask else None  # right-padded batches need no mask in a causal decoder (what mmgen trains with)
    impl = {} if loss_impl == "plain" else {"loss_impl": loss_impl}  # train.loss_impl
    if kind == "mmgen":
        return lambda: fwd(pixel_values=px, input_ids=ids, attention_mask=mask, labels=labels, **impl).loss
    if kind == "mmgen_features":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        feats = torch.randn(b, size.grid**2, size.d_vit, device=device, dtype=dtype)
        return lambda: fwd(features=feats, input_ids=ids, attention_mask=mask, labels=labels, **impl).loss
    if kind == "ved":
        return lambda: fwd(pixel_values=px, decoder_input_ids=ids, labels=labels).loss
    return lambda: fwd(px, ids, labels)


def train_step_fn(kind, model, size: Size, b: int, device, compile_model: bool, args, lever: dict | None = None):
    cuda = device.type == "cuda"
    lever = lever or {}
    if lever.get("fp8"):
        from mmgen.training.levers import convert_fp8

        convert_fp8(model)  # before the optimizer and the compilation, as the trainer does
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=cuda)
    mode = lever.get("mode", args.compile_mode)
    fwd = torch.compile(model, mode=mode) if compile_model else model
    loss_fn = _loss_fn(kind, fwd, size, b, device, args.with_mask, lever.get("loss_impl", "plain"))
    graphs = compile_model and mode == "reduce-overhead"

    from mmgen.transformers_glue import sdpa_context

    def step():
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        # the peers run with PyTorch's default attention kernels, mmgen with train.sdpa_backends' choice
        kernels = sdpa_context(args.sdpa) if kind.startswith("mmgen") and cuda else nullcontext()
        precision = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()  # fp32 on the CPU
        with precision, kernels:
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


LEVERS = {
    "liger": (" + liger loss", {"loss_impl": "liger"}),
    "fp8": (" + fp8", {"fp8": True}),
    "reduce-overhead": (" reduce-overhead", {"mode": "reduce-overhead"}),
    "chunked": (" + chunked loss", {"loss_impl": "chunked"}),
    "cce": (" + cce loss", {"loss_impl": "cce"}),
}
"""``--levers``: each lever's name, the suffix of its rows and what it sets (train.loss_impl, train.fp8,
train.compile_mode)."""


def _lever_rows(name: str, comp: bool, stage1: bool, cuda: bool, chosen=None) -> list[tuple[str, dict]]:
    """The lever rows of the mmgen case ``name`` (``chosen`` levers, default all): each lever alone on the compiled
    case (on a GPU), the chunked loss also on the eager one. float8 is left out of stage 1 (its GPT-2 blocks are
    Conv1D layers, its projector keeps its precision: nothing to convert)."""
    rows = []
    for key, (suffix, lever) in LEVERS.items():
        wanted = comp if cuda else not comp and key == "chunked"
        if wanted and (not chosen or key in chosen) and not (stage1 and key == "fp8"):
            rows.append((name + suffix, lever))
    return rows


def bench_train(args, size: Size, device, results):
    b, n = args.train_batch, size.grid**2
    cuda = device.type == "cuda"
    stock = lambda pool: lambda: StockPrefixModel(size, pool=pool)  # noqa: E731
    cases = [
        (f"mmgen pool ({n // 4} tok)", "mmgen", lambda: mmgen_model(size, "pool"), n // 4, False),
        (f"mmgen pool ({n // 4} tok) + compile", "mmgen", lambda: mmgen_model(size, "pool"), n // 4, True),
        (f"mmgen mlp ({n} tok) + compile", "mmgen", lambda: mmgen_model(size, "mlp"), n, True),
        ("VisionEncoderDecoder (cross-attn)", "ved", lambda: ved_model(size), 0, False),
        (f"stock prefix ({n} tok)", "stock", stock(False), n, False),
        (f"stock prefix pooled ({n // 4} tok) + compile", "stock", stock(True), n // 4, True),
    ]
    if args.quick:
        cases = [c for c in cases if "compile" not in c[0] or c[0].startswith("mmgen pool")]
    if not cuda:  # compiling on a CPU takes minutes and is not what the comparison is about
        cases = [c for c in cases if not c[4]]
    for name, kind, build, prefix, comp in cases:
        wanted = args.levers is not None and name.startswith("mmgen pool")
        levers = _lever_rows(name, comp, False, cuda, args.levers) if wanted else []
        for row, lever in [(name, {}), *levers]:
            run_case(
                results,
                "train",
                row,
                lambda k=kind, f=build, p=prefix, c=comp, v=lever: _train_case(
                    k, f, p, c, size, b, device, args, lever=v
                ),
            )
    # stage 1: frozen ViT + GPT-2, projector only, from cached features
    for comp in (False, True) if cuda else (False,):
        name = "mmgen stage 1 cached features" + (" + compile" if comp else "")
        build = lambda: mmgen_model(size, "pool", "all", "frozen")  # noqa: E731
        levers = _lever_rows(name, comp, True, cuda, args.levers) if args.levers is not None else []
        for row, lever in [(name, {}), *levers]:
            run_case(
                results,
                "train",
                row,
                lambda c=comp, f=build, v=lever: _train_case(
                    "mmgen_features", f, n // 4, c, size, args.stage1_batch, device, args, False, v
                ),
            )


def _check_lever(lever: dict, device) -> None:
    """Raise :class:`Skip` (why) when a lever cannot run on ``device`` (GPU-only, or its package is missing)."""
    from mmgen.config import ConfigError
    from mmgen.training.levers import check_fp8, resolve_loss_impl

    try:
        resolve_loss_impl(lever.get("loss_impl", "plain"), device)
        if lever.get("fp8"):
            check_fp8(device)
    except ConfigError as e:
        raise Skip(str(e)) from None


def _train_case(kind, build, prefix, comp, size: Size, b, device, args, train_encoder=True, lever=None):
    cuda = device.type == "cuda"
    _check_lever(lever or {}, device)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build().to(device).train()
    step = train_step_fn(kind, model, size, b, device, comp, args, lever)
    sec, cpu = timed(step, warmup=args.warmup + (3 if comp else 0), iters=args.iters, device=device)
    ips = b / sec
    out = {"images_per_s": ips, "cpu_s_per_image": cpu / b, "batch": b}
    if cuda:
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
    if args.profile:
        out.update(profile(step, f"train {kind} batch {b}{' compiled' if comp else ''}", args.profile, device))
    if kind != "ved" and train_encoder:
        out["gflop_per_image"] = flops_per_image(size, prefix) / 1e9
        if cuda:
            out["mfu"] = ips * flops_per_image(size, prefix) / (PEAK_TFLOPS * 1e12)
    del model, step
    return out


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------


def _base_row(name: str) -> str | None:
    """The row a lever row compares with: its name without the lever's suffix."""
    return next((name[: -len(suffix)] for suffix, _ in LEVERS.values() if name.endswith(suffix)), None)


def print_table(results):
    train = results.get("train", {})
    if train:
        ref = train.get("VisionEncoderDecoder (cross-attn)", {}).get("images_per_s")
        head = f"{'training':<58} {'img/s':>9} {'CPU-s/img':>10} {'MFU':>6} {'mem GB':>7} {'vs VED':>7} {'vs base':>8}"
        print("\n" + head)
        for name, r in train.items():
            if "images_per_s" not in r:
                print(f"{name:<58} {'skipped' if 'skipped' in r else 'error'}: {r.get('skipped', r.get('error'))}")
                continue
            ips, mfu = r["images_per_s"], r.get("mfu")
            ratio = f"{ips / ref:.2f}x" if ref else "-"
            base = train.get(_base_row(name) or "", {}).get("images_per_s")
            gain = f"{ips / base:.3f}x" if base else "-"
            print(
                f"{name:<58} {ips:>9.1f} {r.get('cpu_s_per_image', float('nan')):>10.3f} "
                f"{(f'{mfu:.0%}' if mfu else '-'):>6} {r.get('peak_mem_gb', float('nan')):>7.1f} {ratio:>7} {gain:>8}"
            )
    if results.get("caption"):
        print("\ncaptioning (medians of interleaved repeats)")
        print("\n".join(caption_table(results)))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when available)")
    p.add_argument("--size", choices=sorted(SIZES), help="model sizes (default: base on a GPU, small on the CPU)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), help="captioning dtype (default: bf16 on a GPU)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    p.add_argument("--sections", nargs="+", choices=["train", "caption"], help="default: both on a GPU, caption")
    p.add_argument("--out", default="benchmark.json")
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--stage1-batch", type=int, default=512)
    p.add_argument("--caption-batches", type=int, nargs="+", help="default: 64 256 512 768 on a GPU, 8 32 on the CPU")
    p.add_argument("--peer-batches", type=int, nargs="+", help="batches the peers run at (default: 64 on a GPU, all)")
    p.add_argument("--projectors", nargs="+", help="mmgen projector kinds (default: pool on a GPU, mlp pool)")
    p.add_argument("--beams", type=int, nargs="+", default=[1, 3, 5], help="1: greedy, K: beam search")
    p.add_argument("--new-tokens", type=int, default=20, help="caption tokens generated (forced)")
    p.add_argument("--no-peers", dest="peers", action="store_false", help="mmgen only")
    p.add_argument(
        "--caches",
        nargs="+",
        choices=["auto", "static", "dynamic"],
        default=["auto"],
        help="mmgen's KV cache: auto (its own choice), static or dynamic (forced); several: one case each",
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed training steps per case")
    p.add_argument("--iters", type=int, default=10, help="timed training steps per case")
    p.add_argument("--caption-warmup", type=int, default=1, help="untimed calls per captioning case")
    p.add_argument("--repeats", "--caption-iters", type=int, default=3, help="timed rounds of the captioning cases")
    p.add_argument("--quick", action="store_true", help="skip the slower compiled peers")
    p.add_argument("--only", nargs="+", help="run only the cases whose name contains one of these words")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print the N costliest kernels/ops per case")
    p.add_argument("--with-mask", action="store_true", help="pass an all-ones attention mask in the training cases")
    p.add_argument(
        "--levers",
        nargs="*",
        choices=list(LEVERS),
        help="add mmgen training rows with these speed levers, one at a time (none named: all; see above)",
    )
    p.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "max-autotune-no-cudagraphs", "reduce-overhead"],
        help="torch.compile mode of the compiled cases (train.compile_mode)",
    )
    p.add_argument(
        "--sdpa",
        nargs="+",
        default=["flash", "efficient", "math"],
        help="attention kernels mmgen's training cases may use on a GPU (train.sdpa_backends)",
    )
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device.startswith("cuda")
    args.size = args.size or ("base" if gpu else "small")
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    args.sections = args.sections or (["train", "caption"] if gpu else ["caption"])
    args.caption_batches = args.caption_batches or ([64, 256, 512, 768] if gpu else [8, 32])
    if gpu:
        args.caption_batches = sorted({64, *args.caption_batches})
    args.peer_batches = args.peer_batches or ([64] if gpu else args.caption_batches)
    args.projectors = args.projectors or (["pool"] if gpu else ["mlp", "pool"])
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("benchmark.py: --device cuda, but no CUDA GPU is available (use --device cpu)", file=sys.stderr)
        return 2
    from mmgen.runtime import set_threads

    set_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    import transformers

    transformers.logging.set_verbosity_error()  # the peers' generate warns about settings it does not use
    results: dict = {
        "_out": args.out,
        "_only": args.only,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "args": vars(args),
    }
    size = SIZES[args.size]
    if "train" in args.sections:
        bench_train(args, size, device, results)
    if "caption" in args.sections:
        bench_caption(args, size, device, getattr(torch, args.dtype), results)
    print_table(results)
    Path(args.out).write_text(json.dumps({k: v for k, v in results.items() if not k.startswith("_")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
