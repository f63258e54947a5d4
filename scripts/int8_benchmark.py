"""int8 vs fp32 CPU captioning: images/s, CPU-seconds, identical captions and CIDEr on held-out scenes.

Renders ``--images`` scenes the model never saw (their own seed), captions them with the fp32 model and
with its dynamic-int8 copy (:mod:`mmgen.quantize`), rounds interleaved, and reports the median images/s
and CPU-seconds per image of each, the share of images whose caption is identical, and the CIDEr-D of
both against the scenes' reference captions.

    python scripts/int8_benchmark.py --model assets/tiny-scenes-model --images 200 --rounds 3
    python scripts/int8_benchmark.py --random 512 6 --images 64 --beams 3 --batch-sizes 1 16   # a larger model

``--random WIDTH DEPTH`` measures a random-init model of that size instead (64x64 images, patch 8, GPT-2
decoder, tokenizer trained on the scene captions): only its speed means something, not its captions.
``--train WIDTH`` first trains a scenes model of that width for ``--train-seconds`` on the CPU (the recipe of
``configs/tiny_cpu.yaml`` widened: encoder, projector and decoder ``WIDTH`` wide, ``--train-depth`` encoder blocks
and decoder layers) and measures it, so that the identical captions say something about int8 on a model that
has learnt; ``--model DIR`` measures any saved model (e.g. one trained that way before: the run's ``best/``).

    python scripts/int8_benchmark.py --train 256 --train-seconds 420 --images 200 --rounds 3 --batch-sizes 1 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(fn):
    """(result, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def random_model(width: int, depth: int, captions: list[str], out: Path) -> str:
    """Save a random-init model of the given width and depth; returns its directory."""
    import torch

    from mmgen.models import CaptionModel, tiny_model_config
    from mmgen.tokenizer import train_caption_tokenizer

    torch.manual_seed(0)
    cfg = tiny_model_config(image_size=64, width=width, depth=depth)
    cfg.encoder.num_heads = cfg.decoder.config_overrides["n_head"] = max(2, width // 64)
    CaptionModel(cfg, train_caption_tokenizer(captions)).save_pretrained(out)
    return str(out)


def train_model(width: int, depth: int, seconds: float, out: Path, threads: int) -> str:
    """Train a ``width``-wide scenes model for ``seconds`` on the CPU (``configs/tiny_cpu.yaml`` widened); returns
    the directory of its best checkpoint."""
    from mmgen.config import load_preset
    from mmgen.training.trainer import Trainer

    heads = max(2, width // 64)
    overrides = [
        f"train.out_dir={out}",
        "data.synth={n_train: 6000, n_val: 200, seed: 0, image_size: 64}",
        f"model.encoder.embed_dim={width}",
        f"model.encoder.depth={depth}",
        f"model.encoder.num_heads={heads}",
        f"model.decoder.config_overrides={{n_layer: {depth}, n_embd: {width}, n_head: {heads}, n_positions: 128, "
        "resid_pdrop: 0.0, embd_pdrop: 0.0, attn_pdrop: 0.0}",
        "train.max_steps=100000",
        f"train.max_time={seconds}",
        "train.schedule=time",
        "train.lr=1.0e-3",
        "train.save_every=100000",
        "train.log_every=50",
        f"train.threads={threads}",
        "train.tensorboard=false",
        "eval.every=0",
        "data.num_workers=0",
    ]
    trainer = Trainer(load_preset("tiny_cpu", overrides), overwrite=True)
    scores = trainer.fit()
    print(
        f"trained {width} wide, {depth} + {depth} layers, {trainer.state.step} steps in {seconds:.0f} s: "
        f"BLEU-4 {scores.get('Bleu_4', float('nan')):.3f}, CIDEr {scores.get('CIDEr', float('nan')):.3f}"
    )
    best = out / "best"
    return str(best if best.is_dir() else out / "final")


def caption_all(captioner, pixels, batch: int, beams: int):
    return timed(lambda: captioner.caption(pixels, batch_size=batch, num_beams=beams))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "assets" / "tiny-scenes-model"))
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--beams", type=int, nargs="+", default=[3, 1])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--random", type=int, nargs=2, metavar=("WIDTH", "DEPTH"), help="a random-init model instead")
    p.add_argument(
        "--parts",
        nargs="+",
        default=["encoder,decoder"],
        metavar="PARTS",
        help="int8 variants to measure, each a comma-separated list of encoder, decoder, lm_head (default: "
        "encoder,decoder: what quantize='int8' does)",
    )
    p.add_argument("--train", type=int, metavar="WIDTH", help="train a scenes model this wide first, then measure it")
    p.add_argument("--train-depth", type=int, default=4, help="encoder blocks and decoder layers of --train (4)")
    p.add_argument("--train-seconds", type=float, default=420, help="CPU training budget of --train (420 s)")
    p.add_argument("--train-threads", type=int, default=None, help="torch threads for --train (default: --threads)")
    p.add_argument("--train-dir", type=Path, default=None, help="run directory of --train (default: a temporary one)")
    args = p.parse_args(argv)

    import torch

    from mmgen.captioner import Captioner
    from mmgen.evaluation.metrics import score_captions
    from mmgen.scenes.writer import make_scenes

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="mmgen-int8-bench-"))
    make_scenes(tmp, args.images, seed=2025)
    coco = json.loads((tmp / "captions_train.json").read_text())
    paths = [str(tmp / im["file_name"]) for im in coco["images"]]
    refs: dict[int, list[str]] = {}
    for a in coco["annotations"]:
        refs.setdefault(a["image_id"], []).append(a["caption"])
    ids = [im["id"] for im in coco["images"]]
    if args.random:
        args.model = random_model(*args.random, [c for cs in refs.values() for c in cs], tmp / "random-model")
    if args.train:
        run_dir = args.train_dir or tmp / "trained"
        threads = args.train_threads or args.threads
        args.model = train_model(args.train, args.train_depth, args.train_seconds, run_dir, threads)
        torch.set_num_threads(args.threads)
    from mmgen.quantize import quantize_int8

    models = {"fp32": Captioner.from_pretrained(args.model, device="cpu")}
    for parts in args.parts:
        name = "int8" if parts == "encoder,decoder" else f"int8 {parts}"
        models[name] = Captioner(
            quantize_int8(Captioner.from_pretrained(args.model, device="cpu").model, tuple(parts.split(",")))
        )
    pixels = [models["fp32"].preprocess(x) for x in paths]  # decoding is the same for both: leave it out
    import platform

    cpu = platform.processor() or platform.machine()
    print(f"model {args.model}")
    print(f"torch {torch.__version__} on {cpu}, {args.threads} thread(s), {args.images} images, {args.rounds} rounds")
    print("\n| beams | batch | model | images/s | CPU-ms / image | vs fp32 | identical captions | CIDEr-D |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for beams in args.beams:
        for batch in args.batch_sizes:
            runs: dict[str, list] = {name: [] for name in models}
            captions: dict[str, list[str]] = {}
            for _ in range(args.rounds):
                for name, captioner in models.items():
                    out, wall, cpu = caption_all(captioner, pixels, batch, beams)
                    runs[name].append((args.images / wall, 1000 * cpu / args.images))
                    captions[name] = out
            base = statistics.median(r[0] for r in runs["fp32"])
            for name in models:
                same = sum(a == b for a, b in zip(captions["fp32"], captions[name])) / args.images
                speed = statistics.median(r[0] for r in runs[name])
                cpu_ms = statistics.median(r[1] for r in runs[name])
                cider = score_captions(refs, dict(zip(ids, captions[name])), metrics=["CIDEr"])["CIDEr"]
                agree = f"{same:.1%}" if name != "fp32" else ""
                row = [beams, batch, name, f"{speed:.1f}", f"{cpu_ms:.1f}", f"{speed / base:.2f}×", agree]
                row.append(f"{cider:.3f}")
                print("| " + " | ".join(map(str, row)) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
