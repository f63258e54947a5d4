"""Check and time the fast decoding path against the dynamic one and transformers' generate.

    python scripts/decode_selfcheck.py                     # GPT-2 124M (random weights) on CUDA
    python scripts/decode_selfcheck.py --decoder DIR       # a local causal LM instead
    python scripts/decode_selfcheck.py --device cpu --tiny

For greedy and each beam width it reports, as JSON: the share of sequences identical between the
fast path (static cache, CUDA graphs on CUDA), the dynamic path and ``generate`` (compared in
fp32, where rounding cannot reorder candidates), the largest score difference, and images per
second of each path in the timing dtype, every sequence forced to its full length (EOS banned
until the last step, the slowest case for every path). With an encoder (default ``vit_base_patch16_224``,
random weights, 196 patch tokens + BOS as the prompt) it also times image -> tokens end to end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's mmgen, run from anywhere

from mmgen.config import GenerationConfig  # noqa: E402
from mmgen.generation import DecodeCache  # noqa: E402
from mmgen.generation import search as _search  # noqa: E402

CACHE = DecodeCache()  # this script's static-cache sessions: the fast path reuses them across calls


def search(*args, **kwargs):
    """:func:`mmgen.generation.search` keeping its buffers in this script's cache."""
    return _search(*args, cache=CACHE, **kwargs)


def _decoder(args: argparse.Namespace) -> tuple[torch.nn.Module, int, int]:
    """The causal LM (fp32, eval mode), its end-of-sequence id and a pad id."""
    from transformers import AutoModelForCausalLM, GPT2Config

    if args.decoder:
        model = AutoModelForCausalLM.from_pretrained(args.decoder, attn_implementation="sdpa").float()
        eos = model.config.eos_token_id
        eos = eos[0] if isinstance(eos, list) else eos
        pad = model.config.pad_token_id
        return model.eval(), eos, eos if pad is None else pad
    torch.manual_seed(0)
    if args.tiny:
        ids = dict(bos_token_id=2, eos_token_id=3, pad_token_id=1)
        cfg = GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=2, initializer_range=0.1, **ids)
        eos, pad = 3, 1
    else:
        cfg = GPT2Config()  # GPT-2 124M: 12 layers, 768 wide, 50257 tokens
        eos = pad = cfg.eos_token_id
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    with torch.no_grad():  # an EOS logit that depends on the context, so that sequences end at different steps
        head = model.get_output_embeddings().weight
        head[eos] = head[eos] + 4 * cfg.initializer_range * torch.randn_like(head[eos])
    return model, eos, pad


def _rows(out) -> list[tuple[int, ...]]:
    """Our sequences, one tuple per (image, rank), cut at their length."""
    b, r, _ = out.sequences.shape
    seqs, lengths = out.sequences.reshape(b * r, -1).tolist(), out.lengths.reshape(-1).tolist()
    return [tuple(s[:n]) for s, n in zip(seqs, lengths)]


def _generate(model, embeds, gen: GenerationConfig, eos: int, pad: int):
    """transformers' generate: (sequences cut after their first EOS, scores or None)."""
    kwargs = dict(num_beams=gen.num_beams, max_new_tokens=gen.max_new_tokens, eos_token_id=eos, pad_token_id=pad)
    kwargs.update(do_sample=False, output_scores=gen.num_beams > 1, min_new_tokens=gen.min_new_tokens)
    if gen.num_beams > 1:
        kwargs["early_stopping"] = gen.early_stopping
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = model.generate(inputs_embeds=embeds, attention_mask=mask, return_dict_in_generate=True, **kwargs)
    rows = []
    for seq in out.sequences.tolist():
        rows.append(tuple(seq[: seq.index(eos) + 1] if eos in seq else seq))
    return rows, getattr(out, "sequences_scores", None)


def _seconds(fn, repeats: int, device: torch.device) -> float:
    """Mean wall time of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def _agreement(model, embeds, gen, eos, pad) -> dict:
    """Share of identical sequences: fast vs dynamic vs generate (same dtype as ``model``)."""
    fast = search(model, embeds, gen, eos, pad, static_cache=True)
    dynamic = search(model, embeds, gen, eos, pad, static_cache=False)
    ref, ref_scores = _generate(model, embeds, gen, eos, pad)
    ours, theirs = _rows(fast), _rows(dynamic)
    report = {
        "same_as_dynamic": sum(a == b for a, b in zip(ours, theirs)) / len(ours),
        "same_as_generate": sum(a == b for a, b in zip(ours, ref)) / len(ours),
        "max_score_diff_dynamic": float((fast.scores - dynamic.scores).abs().max()),
    }
    if ref_scores is not None:
        report["max_score_diff_generate"] = float((fast.scores.reshape(-1) - ref_scores).abs().max())
    report["mean_length"] = sum(map(len, ours)) / len(ours)
    return report


def _speed(model, embeds, gen, eos, pad, repeats: int, with_generate: bool) -> dict:
    """Images per second of each path."""
    device, b = embeds.device, embeds.shape[0]
    CACHE.clear()
    start = time.perf_counter()
    search(model, embeds, gen, eos, pad, static_cache=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    paths = {
        "fast": lambda: search(model, embeds, gen, eos, pad, static_cache=True),
        "static_no_graph": lambda: search(model, embeds, gen, eos, pad, static_cache=True, cuda_graph=False),
        "dynamic": lambda: search(model, embeds, gen, eos, pad, static_cache=False),
    }
    if with_generate:
        paths["generate"] = lambda: _generate(model, embeds, gen, eos, pad)
    speed = {"first_call_s": round(time.perf_counter() - start, 4)}
    for name, fn in paths.items():
        speed[f"{name}_images_per_s"] = round(b / _seconds(fn, repeats, device), 1)
    return speed


def _end_to_end(args, model, gen, eos, pad, device, dtype) -> dict:
    """Images per second from pixels: timm encoder -> linear projector -> BOS -> beam search."""
    import timm

    encoder = timm.create_model(args.encoder, pretrained=False, num_classes=0).to(device, dtype).eval()
    width = model.get_input_embeddings().embedding_dim
    projector = torch.nn.Linear(encoder.num_features, width).to(device, dtype)
    bos = model.get_input_embeddings().weight[eos].view(1, 1, -1)  # GPT-2's BOS is its EOS token
    pixels = torch.randn(args.batch, 3, 224, 224, device=device, dtype=dtype)

    def caption():
        tokens = encoder.forward_features(pixels)[:, encoder.num_prefix_tokens :]  # (B, N, C) patch tokens
        prefix = projector(tokens)  # (B, N, D)
        embeds = torch.cat([prefix, bos.expand(prefix.shape[0], 1, -1)], dim=1)  # (B, N + 1, D)
        return search(model, embeds, gen, eos, pad, static_cache=True)

    encode = _seconds(lambda: encoder.forward_features(pixels), args.repeats, device)
    total = _seconds(caption, args.repeats, device)
    return {
        "encoder": args.encoder,
        "encoder_images_per_s": round(args.batch / encode, 1),
        "caption_images_per_s": round(args.batch / total, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    """Run the checks and print (and return) the JSON report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", help="timing dtype (agreement is checked in float32)")
    p.add_argument("--decoder", help="local causal-LM directory (default: GPT-2 124M with random weights)")
    p.add_argument("--tiny", action="store_true", help="a 2-layer toy decoder (CPU smoke test)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--check-batch", type=int, default=16, help="images for the agreement check")
    p.add_argument("--prompt-len", type=int, default=197, help="prompt tokens: image prefix + BOS")
    p.add_argument("--new-tokens", type=int, default=20)
    p.add_argument("--beams", default="1,3,5")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--encoder", default="vit_base_patch16_224", help="timm encoder for the end-to-end time; 'none'")
    p.add_argument("--no-generate", action="store_true", help="do not time transformers' generate")
    args = p.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.tiny:
        args.prompt_len, args.new_tokens, args.encoder = 4, 6, "none"
        args.check_batch = min(args.check_batch, args.batch)

    model, eos, pad = _decoder(args)
    model.to(device)
    width = model.get_input_embeddings().embedding_dim
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(args.batch, args.prompt_len, width, generator=g).to(device)  # (B, L0, D)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    report.update(torch=torch.__version__, dtype=args.dtype, batch=args.batch, prompt_len=args.prompt_len)
    report.update(new_tokens=args.new_tokens, decoder=args.decoder or ("tiny" if args.tiny else "gpt2-124M-random"))
    import transformers

    report["transformers"] = transformers.__version__
    gens = {
        (f"beam{k}" if k > 1 else "greedy"): GenerationConfig(num_beams=k, max_new_tokens=args.new_tokens)
        for k in map(int, args.beams.split(","))
    }
    runs = []
    with torch.inference_mode():
        for name, gen in gens.items():
            runs.append({"mode": name, **_agreement(model, embeds[: args.check_batch], gen, eos, pad)})
        CACHE.clear()
        model.to(dtype)
        timed = embeds.to(dtype)
        full = {name: dataclasses.replace(gen, min_new_tokens=gen.max_new_tokens) for name, gen in gens.items()}
        for row, gen in zip(runs, full.values()):
            row.update(_speed(model, timed, gen, eos, pad, args.repeats, not args.no_generate))
        if args.encoder != "none":
            gen = full.get("beam3", next(iter(full.values())))
            speed = _end_to_end(args, model, gen, eos, pad, device, dtype)
            report["end_to_end"] = {"mode": f"beam{gen.num_beams}", **speed}
    report["runs"] = runs
    CACHE.clear()
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
