"""The captioning section of ``scripts/benchmark.py``: mmgen and its peers on the same images, interleaved.

For every search (greedy, beam K) and batch size, each case captions the same random images with
``new_tokens`` tokens forced (``min_new_tokens = max_new_tokens``), from pixels to caption texts:

* ``mmgen KIND``: ``generate`` of mmgen's model with the ``KIND`` projector (the KV cache
  ``static_cache="auto"`` chooses); ``mmgen KIND static`` / ``mmgen KIND dynamic`` (``--caches``): the
  same with ``static_cache=True`` / ``False``;
* ``generate KIND``: transformers' ``generate`` on the same model (its decoder fed mmgen's prompt
  embeddings): the stock prefix model, with mmgen's weights, so its captions must be mmgen's;
* ``VisionEncoderDecoder``: transformers' cross-attention model of the same sizes, with ``generate``.

The cases take turns (one call each per round, ``repeats`` rounds after ``warmup`` calls each), so a
machine shared with other jobs slows them alike; medians are reported. ``same_as_generate`` is the
fraction of images whose mmgen caption equals the one ``generate`` gave on the same model.
"""

from __future__ import annotations

import traceback

import torch
from benchmark_common import Size, measure, mmgen_model, profile, record, selected, summarize, ved_model


def search_label(beams: int) -> str:
    return "greedy" if beams == 1 else f"beam {beams}"


def _texts(tokenizer, sequences: torch.Tensor) -> list[str]:
    """Caption texts of generated ids ``(B, T)`` (special tokens, hence padding after EOS, skipped)."""
    from mmgen.generation.captions import decode_sequences

    lengths = torch.full((sequences.shape[0],), sequences.shape[1])
    return decode_sequences(tokenizer, sequences.cpu(), lengths)


def _mmgen_case(model, px: torch.Tensor, gen, static_cache: bool | str):
    return lambda: model.generate(px, gen, static_cache=static_cache).best


def _generate_kwargs(gen) -> dict:
    keys = ("num_beams", "max_new_tokens", "min_new_tokens", "do_sample")
    beam_keys = ("early_stopping", "length_penalty") if gen.num_beams > 1 else ()  # beam search only
    return {k: getattr(gen, k) for k in keys + beam_keys}


def _generate_case(model, px: torch.Tensor, gen):
    """transformers' ``generate`` on mmgen's decoder, fed mmgen's prompt embeddings."""
    tok = model.tokenizer
    kwargs = {**_generate_kwargs(gen), "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}

    @torch.inference_mode()
    def run() -> list[str]:
        embeds = model.prompt_embeds(px)  # (B, N' + 1, D)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return _texts(tok, model.decoder.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs))

    return run


def _ved_case(ved, tokenizer, px: torch.Tensor, gen):
    kwargs = _generate_kwargs(gen)

    @torch.inference_mode()
    def run() -> list[str]:
        return _texts(tokenizer, ved.generate(pixel_values=px, **kwargs))

    return run


CACHES = {"auto": "auto", "static": True, "dynamic": False}  # --caches: static_cache of the mmgen cases


def _cases(models: dict, ved, px: torch.Tensor, gen, args, peers: bool) -> dict:
    cases = {}
    for kind, model in models.items():
        for cache in args.caches:
            name = f"mmgen {kind}" if cache == "auto" else f"mmgen {kind} {cache}"
            cases[name] = _mmgen_case(model, px, gen, CACHES[cache])
        if peers:
            cases[f"generate {kind}"] = _generate_case(model, px, gen)
    if peers and ved is not None:
        cases["VisionEncoderDecoder"] = _ved_case(ved, next(iter(models.values())).tokenizer, px, gen)
    return cases


def run_group(results: dict, cases: dict, label: str, batch: int, args, device: torch.device) -> None:
    """Time ``cases`` in turns (one call each per round) and record each as ``"{case} {label}"``."""
    names = [n for n in cases if selected(results, f"{n} {label}")]
    samples: dict[str, list] = {n: [] for n in names}
    outputs, errors = {}, {}

    def call(name: str, timed: bool) -> None:
        try:
            wall, cpu, outputs[name] = measure(cases[name], device)
        except Exception as e:  # one failing case (out of memory...) must not lose the others
            errors[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]}
            return
        if timed:
            samples[name].append((wall, cpu))

    for _ in range(args.caption_warmup):
        for name in names:
            call(name, timed=False)
    for _ in range(args.repeats):
        for name in (n for n in names if n not in errors):
            call(name, timed=True)
    for name in names:
        if name in errors:
            record(results, "caption", f"{name} {label}", {"case": name, "group": label, **errors[name]})
            continue
        out = {"case": name, "group": label, **summarize(samples[name], batch)}
        reference = outputs.get("generate " + name.split()[1]) if name.startswith("mmgen") else None
        if reference is not None:
            out["same_as_generate"] = sum(a == b for a, b in zip(outputs[name], reference)) / batch
        record(results, "caption", f"{name} {label}", out)


def bench_caption(args, size: Size, device: torch.device, dtype: torch.dtype, results: dict) -> None:
    """Every search of ``args.beams`` at every batch of ``args.caption_batches``; the peers at
    ``args.peer_batches``."""
    from mmgen.config import GenerationConfig

    torch.manual_seed(0)
    models = {kind: mmgen_model(size, kind).to(device, dtype).eval() for kind in args.projectors}
    ved = ved_model(size).to(device, dtype).eval() if args.peers else None
    pixels = torch.Generator().manual_seed(0)
    for beams in args.beams:
        n = args.new_tokens
        gen = GenerationConfig(num_beams=beams, max_new_tokens=n, min_new_tokens=n, early_stopping=True)
        for b in args.caption_batches:
            px = torch.randn(b, 3, size.img, size.img, generator=pixels).to(device, dtype)
            cases = _cases(models, ved, px, gen, args, peers=args.peers and b in args.peer_batches)
            run_group(results, cases, f"{search_label(beams)} b{b}", b, args, device)
            for kind in models if args.profile else ():
                name = f"mmgen {kind} {search_label(beams)} b{b}"
                if selected(results, name):
                    profile(cases[f"mmgen {kind}"], name, args.profile, device)


def caption_table(results: dict) -> list[str]:
    """Markdown rows: every captioning case with images/s, CPU-seconds per image, and how much faster it is
    than VisionEncoderDecoder on the same search and batch, by wall time and by CPU time."""
    rows = ["| case | images/s (min-max) | CPU-s / image | vs VED (images/s) | vs VED (CPU-s) | same as generate |"]
    rows.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    section = results.get("caption", {})
    for name, r in section.items():
        if "error" in r:
            rows.append(f"| {name} | {r['error'][:60]} | | | | |")
            continue
        ved = section.get(f"VisionEncoderDecoder {r['group']}", {})
        speed = f"{r['images_per_s'] / ved['images_per_s']:.2f}x" if "images_per_s" in ved else "-"
        cpu = f"{ved['cpu_s_per_image'] / r['cpu_s_per_image']:.2f}x" if "cpu_s_per_image" in ved else "-"
        low, high = r["images_per_s_range"]
        same = f"{r['same_as_generate']:.0%}" if "same_as_generate" in r else ""
        ips = f"{r['images_per_s']:,.2f} ({low:,.2f}-{high:,.2f})"
        rows.append(f"| {name} | {ips} | {r['cpu_s_per_image']:.3f} | {speed} | {cpu} | {same} |")
    return rows
