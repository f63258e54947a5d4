#!/usr/bin/env python
"""mmgen against transformers' VisionEncoderDecoderModel, side by side in one process, on the same data.

Both models train from scratch on the same batches (same images, same sampled captions, same order), with
the same optimizer settings, learning-rate schedule, thread count and tokenizer; the baseline is a
``VisionEncoderDecoderModel`` (transformers ViT + GPT-2 with cross-attention) whose width is chosen so its
parameter count matches mmgen's. Training steps of the arms are interleaved, so both see the same machine.

Two budgets:
- ``--steps N``: equal images seen (N steps x batch for every arm);
- ``--cpu-seconds S``: equal training CPU-seconds; each arm's cosine schedule follows its own CPU clock and
  the arm with the least CPU time so far takes the next step. With ``--device cuda`` the clock is each arm's
  synchronised wall time on the GPU (bf16 autocast), so the budget is equal GPU-seconds.

Every ``--eval-every`` steps (and at the end) each arm captions the held-out images with beam search (mmgen's
own search; ``generate`` for the baseline), scored with pycocoevalcap's BLEU and CIDEr-D after PTB
tokenisation, plus the distinct-caption share and the scene attribute accuracies. With
``--set train.ema_decay=D`` every arm keeps a moving average of its weights (updated inside its training
step, so its CPU time counts) and that average is what is evaluated. Output: a table, a JSON
file and learning curves (CIDEr against images seen and against training CPU-seconds) as a PNG.

The scenes are synthesised into ``--data-dir`` once (``--data-seed``) and reused; a folder holding other scenes
is refused, never rewritten. ``--seed`` sets the weights, batch order and caption sampling: repeat a comparison
over seeds with ``--seed S --data-seed S --data-dir DIR-S`` (a folder per data seed).

  python scripts/compare_baseline.py --data-dir /tmp/hard --difficulty hard --n-train 10000 --n-val 500 \\
      --steps 1500 --threads 1 --out runs/compare_hard
  python scripts/compare_baseline.py ... --arm mmgen-pool=model.projector.kind=pool   # extra mmgen arms
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from compare_report import plot, print_table  # noqa: E402

from mmgen.config import Config, GenerationConfig, load_config  # noqa: E402
from mmgen.scenes import difficulties  # noqa: E402
from mmgen.training.ema import WeightAverage, averaged, build_average  # noqa: E402
from mmgen.training.schedule import time_lr_factor  # noqa: E402

# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


@dataclass
class Data:
    train_records: list
    train_captions: list[list[str]]
    val_records: list
    val_ids: list
    val_refs: dict
    val_scenes: dict | None
    tokenizer: object
    decoded: dict = field(default_factory=dict)

    def pixels(self, split: str, size: int) -> torch.Tensor:
        """The split's images as uint8 (N, 3, size, size), decoded once per size (an arm's own resolution)."""
        if (split, size) not in self.decoded:
            self.decoded[split, size] = _pixels(self.train_records if split == "train" else self.val_records, size)
        return self.decoded[split, size]


def _pixels(records, size: int) -> torch.Tensor:
    """Decode every image once (the project's safe decoder) into a uint8 tensor (N, 3, size, size)."""
    from PIL import Image

    from mmgen.data.images import decode_image

    out = torch.empty((len(records), 3, size, size), dtype=torch.uint8)
    for i, r in enumerate(records):
        im = decode_image(r.image)
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BICUBIC)
        out[i] = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)
    return out


def _scenes_mismatch(root: Path, want: dict) -> list[str]:
    """What the scenes in ``root`` differ in from ``want`` (seed, image_size, difficulty, train / val counts)."""
    out = []
    for split in ("train", "val"):
        path = root / f"captions_{split}.json"
        try:
            info = json.loads(path.read_text())
            have = {**info["info"], split: len(info["images"])}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"compare_baseline: cannot read the scenes of --data-dir {root}: {path}: {e!r}") from None
        have.setdefault("difficulty", "simple")
        out += [f"{k} {have.get(k)} (asked {v})" for k, v in want.items() if k in have and have[k] != v]
    return sorted(set(out))


def prepare_scenes(args: argparse.Namespace, size: int) -> Path:
    """The scenes in ``--data-dir``: made once, reused while they match the arguments, never rewritten.

    A new folder is synthesised beside it and renamed into place, so runs started together never read a
    half-written image; a folder that holds other scenes (another ``--data-seed``, size, difficulty or count) is
    refused rather than overwritten under a run that may be reading it.
    """
    import os
    import shutil

    from mmgen.scenes.writer import make_scenes_splits

    root = Path(args.data_dir)
    want = {"seed": args.data_seed, "image_size": size, "difficulty": args.difficulty}
    want |= {"train": args.n_train, "val": args.n_val}
    if not (root / "captions_val.json").is_file():
        if root.exists() and any(root.iterdir()):
            raise SystemExit(f"compare_baseline: --data-dir {root} is not empty and holds no scenes; use a new folder")
        side = root.with_name(f".{root.name}.making-{os.getpid()}")
        make_scenes_splits(side, args.n_train, args.n_val, seed=args.data_seed, image_size=size,
                           difficulty=args.difficulty)  # fmt: skip
        try:
            os.replace(side, root)  # atomic; onto an empty folder too
        except OSError:  # another run put its scenes there first: use those (checked below)
            shutil.rmtree(side, ignore_errors=True)
    differ = _scenes_mismatch(root, want)
    if differ:
        raise SystemExit(
            f"compare_baseline: --data-dir {root} holds other scenes: {', '.join(differ)}; "
            "use another --data-dir for these (scenes are never rewritten in place)"
        )
    return root


def prepare_data(args: argparse.Namespace, cfg: Config) -> Data:
    from mmgen.data.sources import load_records
    from mmgen.scenes.accuracy import SceneTruth, load_scenes
    from mmgen.tokenizer import ensure_special_tokens, train_caption_tokenizer

    size = cfg.model.encoder.img_size or 64
    root = prepare_scenes(args, args.scene_size or size)
    train = load_records(str(root / "captions_train.json"))
    val = load_records(str(root / "captions_val.json"))[: args.eval_images]
    tc = cfg.model.tokenizer
    tok = train_caption_tokenizer(
        (c for r in train for c in r.captions), tc.kind, tc.vocab_size, tc.min_frequency, tc.lowercase
    )
    scenes = load_scenes(root / "captions_val.json")
    return Data(
        train_records=train,
        train_captions=[list(r.captions) for r in train],
        val_records=val,
        val_ids=[r.image_id for r in val],
        val_refs={r.image_id: list(r.captions) for r in val},
        val_scenes=SceneTruth({r.image_id: scenes[r.image_id] for r in val}, scenes.vocabulary) if scenes else None,
        tokenizer=ensure_special_tokens(tok),
    )


def batches(data: Data, batch_size: int, seed: int, per_image: int = 1):
    """Endless (image indices, ``per_image`` sampled captions of each, image by image): a permutation per epoch;
    an image's captions are drawn without replacement (cycling when it has fewer)."""
    g = torch.Generator().manual_seed(seed)
    n = len(data.train_captions)
    if n < batch_size:
        raise SystemExit(f"compare_baseline: --batch-size {batch_size} is more than the {n} training images")
    while True:
        order = torch.randperm(n, generator=g).tolist()
        for s in range(0, n - batch_size + 1, batch_size):
            idx = order[s : s + batch_size]
            caps = []
            for i in idx:
                refs = data.train_captions[i]
                perm = torch.randperm(len(refs), generator=g).tolist()
                caps += [refs[perm[j % len(refs)]] for j in range(per_image)]
            yield idx, caps


# --------------------------------------------------------------------------------------------
# the arms
# --------------------------------------------------------------------------------------------


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def build_mmgen(cfg: Config, tokenizer) -> torch.nn.Module:
    from mmgen.models import CaptionModel

    return CaptionModel(cfg.model, tokenizer)


def _ved(tokenizer, width: int, cfg: Config):
    from transformers import GPT2Config, GPT2LMHeadModel, VisionEncoderDecoderModel, ViTConfig, ViTModel

    enc = cfg.model.encoder
    heads = enc.num_heads or 4
    dec_over = cfg.model.decoder.config_overrides
    encoder = ViTModel(
        ViTConfig(
            image_size=enc.img_size or 64,
            patch_size=enc.patch_size or 8,
            hidden_size=width,
            num_hidden_layers=enc.depth or 2,
            num_attention_heads=heads,
            intermediate_size=4 * width,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        add_pooling_layer=False,
    )
    decoder = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=dec_over.get("n_positions", 128),
            n_embd=width,
            n_layer=dec_over.get("n_layer", 2),
            n_head=heads,
            add_cross_attention=True,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.config.decoder_start_token_id = tokenizer.bos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    return model


def build_baseline(tokenizer, cfg: Config, target: int):
    """The VisionEncoderDecoderModel of mmgen's depths whose width (a multiple of the heads) gives the
    parameter count closest to ``target``."""
    heads = cfg.model.encoder.num_heads or 4
    size = {}

    def params(width: int) -> int:
        if width not in size:
            size[width] = n_params(_ved(tokenizer, width, cfg))
        return size[width]

    lo, hi = heads, heads * 4  # parameters grow with the width: double, then bisect (in multiples of the heads)
    while params(hi) < target:
        lo, hi = hi, hi * 2
    while hi - lo > heads:
        mid = (lo + hi) // 2 // heads * heads
        lo, hi = (mid, hi) if params(mid) < target else (lo, mid)
    best = min((lo, hi), key=lambda w: abs(params(w) - target))
    return _ved(tokenizer, best, cfg)


@dataclass
class Arm:
    """One model under training, with its clocks and curve."""

    name: str
    kind: str  # 'mmgen' | 'ved'
    model: torch.nn.Module
    cfg: Config
    optimizer: torch.optim.Optimizer = None
    average: WeightAverage | None = None  # train.ema_decay: what is evaluated
    steps: int = 0
    images: int = 0
    cpu: float = 0.0  # training CPU-seconds (process time; synchronised GPU wall time on CUDA)
    wall: float = 0.0
    losses: list = field(default_factory=list)
    curve: list = field(default_factory=list)
    done: bool = False

    def __post_init__(self) -> None:
        tc = self.cfg.train
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=tc.lr, betas=tc.betas)
        self.average = build_average(self.model, tc.ema_decay)


def loss_of(arm: Arm, pixels: torch.Tensor, captions: list[str], tokenizer) -> torch.Tensor:
    from mmgen.data.collate import tokenize_captions

    cfg = arm.cfg
    t = {
        k: v.to(pixels.device)
        for k, v in tokenize_captions(tokenizer, captions, cfg.model.prompt, cfg.model.max_caption_tokens).items()
    }
    smoothing = cfg.train.label_smoothing  # train.label_smoothing: the same loss for every arm
    if arm.kind == "mmgen":  # K captions per image: the decoder shares one pass over each image prefix
        return arm.model(
            pixel_values=pixels, input_ids=t["input_ids"], labels=t["labels"], label_smoothing=smoothing
        ).loss
    k = len(captions) // pixels.shape[0]
    pixels = pixels.repeat_interleave(k, dim=0)  # a stock encoder-decoder sees each pair as its own image
    # BOS c1 .. cn EOS pad: the decoder reads BOS .. cn and predicts c1 .. EOS (labels -100 on padding)
    labels = t["labels"][:, 1:]
    # transformers' own loss has no smoothing argument: with smoothing it is not asked for, and computed here
    out = arm.model(pixel_values=pixels, decoder_input_ids=t["input_ids"][:, :-1], labels=None if smoothing else labels)
    if not smoothing:
        return out.loss
    logits = out.logits.float()  # (B*K, T-1, V)
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, label_smoothing=smoothing
    )


def train_step(arm: Arm, data: Data, idx: list[int], captions: list[str], progress: float, mean, std) -> None:
    tc = arm.cfg.train
    factor = time_lr_factor(arm.steps, tc.warmup_steps, progress, tc.min_lr_ratio)
    for g in arm.optimizer.param_groups:
        g["lr"] = tc.lr * factor
    cuda = mean.is_cuda
    c0, w0 = time.process_time(), time.perf_counter()
    size = arm.cfg.model.encoder.img_size or 64
    pixels = (data.pixels("train", size)[idx].to(mean.device).float() / 255.0 - mean) / std  # (B, 3, H, W)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        loss = loss_of(arm, pixels, captions, data.tokenizer)
    loss.backward()
    if tc.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(arm.model.parameters(), tc.grad_clip)
    arm.optimizer.step()
    arm.optimizer.zero_grad(set_to_none=True)
    if arm.average is not None:
        arm.average.update(arm.model)
    if cuda:
        torch.cuda.synchronize()
    arm.wall += time.perf_counter() - w0
    arm.cpu += time.perf_counter() - w0 if cuda else time.process_time() - c0
    arm.steps += 1
    arm.images += len(idx)
    arm.losses.append(float(loss.detach()))


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------


@torch.inference_mode()
def caption(arm: Arm, data: Data, beams: int, batch: int, mean, std) -> list[str]:
    arm.model.eval()
    max_new = arm.cfg.model.max_caption_tokens
    out: list[str] = []
    for s in range(0, len(data.val_ids), batch):
        px = data.pixels("val", arm.cfg.model.encoder.img_size or 64)[s : s + batch].to(mean.device)
        if arm.kind == "mmgen":
            gen = GenerationConfig(num_beams=beams, max_new_tokens=max_new)
            out += arm.model.generate(px, gen).best
        else:
            tok = data.tokenizer
            ids = arm.model.generate(
                pixel_values=(px.float() / 255.0 - mean) / std,
                num_beams=beams,
                max_new_tokens=max_new,
                early_stopping=True,
                decoder_start_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
            out += [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
    arm.model.train()
    return out


def coco_scores(refs: dict, cands: dict) -> dict:
    """pycocoevalcap's BLEU-4 and CIDEr-D on PTB-tokenised captions (what COCOEvalCap computes)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    from mmgen.evaluation.ptb import ptb_tokenize

    ids = list(refs)
    flat = ptb_tokenize([c for i in ids for c in refs[i]], backend="python")
    gts, k = {}, 0
    for i in ids:
        gts[i] = flat[k : k + len(refs[i])]
        k += len(refs[i])
    res = dict(zip(ids, ([c] for c in ptb_tokenize([cands[i] for i in ids], backend="python"))))
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, per_image = Cider().compute_score(gts, res)
    return {"Bleu_4": float(bleu[3]), "CIDEr": float(cider), "CIDEr_per_image": [float(c) for c in per_image]}


def evaluate(arm: Arm, data: Data, args: argparse.Namespace, mean, std) -> dict:
    from mmgen.evaluation.collapse import collapse_stats
    from mmgen.scenes.accuracy import scene_accuracy

    t0 = time.perf_counter()
    with averaged(arm.average, arm.model):
        caps = dict(zip(data.val_ids, caption(arm, data, args.beams, args.eval_batch, mean, std)))
    row = {"step": arm.steps, "images": arm.images, "cpu_s": arm.cpu, "wall_s": arm.wall}
    row["loss"] = float(np.mean(arm.losses[-20:])) if arm.losses else None
    row.update(coco_scores(data.val_refs, caps))
    row["distinct"] = collapse_stats(caps)["distinct_fraction"]
    if data.val_scenes:
        acc = scene_accuracy(caps, data.val_scenes)
        row.update({f"scene_{k}": v for k, v in acc.items() if isinstance(v, float)})
    row["eval_s"] = time.perf_counter() - t0
    row["examples"] = [caps[i] for i in data.val_ids[:3]]
    row["captions"] = [caps[i] for i in data.val_ids]
    arm.curve.append(row)
    return row


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


def build_arms(args: argparse.Namespace, data: Data) -> list[Arm]:
    """The mmgen arm(s) from the config plus each ``--arm NAME=overrides``, and the matched baseline."""
    arms = []
    specs = [] if args.no_default_arm else [("mmgen", [])]
    specs += [(a.split("=", 1)[0], a.split("=", 1)[1].split(",")) for a in args.arm]
    for name, extra in specs:
        cfg = load_config(args.config, args.set + extra)
        torch.manual_seed(args.seed)
        arms.append(Arm(name, "mmgen", build_mmgen(cfg, data.tokenizer).to(args.device), cfg))
    if not args.no_baseline:
        cfg = load_config(args.config, args.set)
        target = n_params(arms[0].model) if arms else n_params(build_mmgen(cfg, data.tokenizer))
        base_cfg = load_config(args.config, args.set + args.baseline_set)  # its own depths, patches, K...
        torch.manual_seed(args.seed)
        ved = build_baseline(data.tokenizer, base_cfg, target)
        arms.append(Arm("VisionEncoderDecoder", "ved", ved.to(args.device), base_cfg))
    for a in arms:
        a.model.train()
    return arms


def run(args: argparse.Namespace) -> dict:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # right-padded batches need no attention mask (causal attention)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.set)
    data = prepare_data(args, cfg)
    arms = build_arms(args, data)
    mmgen_arms = [a for a in arms if a.kind == "mmgen"]  # none: the baseline alone, normalised as mmgen would
    probe = mmgen_arms[0].model.data_config if mmgen_arms else build_mmgen(cfg, data.tokenizer).data_config
    mean = torch.tensor(probe["mean"], device=args.device).view(1, 3, 1, 1)
    std = torch.tensor(probe["std"], device=args.device).view(1, 3, 1, 1)
    for a in arms:
        print(f"{a.name}: {n_params(a.model):,} parameters", flush=True)
    streams = {a.name: batches(data, args.batch_size, args.seed, a.cfg.data.captions_per_image) for a in arms}
    budget_cpu = args.cpu_seconds

    def progress(a: Arm) -> float:
        if budget_cpu:
            return a.cpu / budget_cpu
        return (a.steps - a.cfg.train.warmup_steps) / max(1, args.steps - a.cfg.train.warmup_steps)

    def finished(a: Arm) -> bool:
        return a.cpu >= budget_cpu if budget_cpu else a.steps >= args.steps

    next_eval = {a.name: args.eval_every for a in arms}
    while not all(a.done for a in arms):
        # the arm that has spent the least (steps or CPU time) goes next: the arms stay side by side
        a = min((a for a in arms if not a.done), key=lambda a: a.cpu if budget_cpu else a.steps)
        idx, caps = next(streams[a.name])
        train_step(a, data, idx, caps, progress(a), mean, std)
        a.done = finished(a)
        if a.done or (args.eval_every and a.steps >= next_eval[a.name]):
            next_eval[a.name] += args.eval_every
            row = evaluate(a, data, args, mean, std)
            print(
                f"{a.name:>22} step {a.steps:5d}  cpu {a.cpu:7.1f}s  loss {row['loss']:.3f}  "
                f"BLEU-4 {row['Bleu_4']:.3f}  CIDEr {row['CIDEr']:.3f}  | {row['examples'][0]}",
                flush=True,
            )
    out = summarise(args, arms, data)
    if args.save_models:
        out["_arms"] = arms  # taken out again before result.json is written
    return out


PER_IMAGE = ("captions", "CIDEr_per_image")  # kept for the final evaluation only


def summarise(args: argparse.Namespace, arms: list[Arm], data: Data) -> dict:
    out = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "threads": args.threads,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "clock": "synchronised GPU wall seconds" if args.device == "cuda" else "process CPU seconds",
        "batch_size": args.batch_size,
        "budget": {"cpu_seconds": args.cpu_seconds} if args.cpu_seconds else {"steps": args.steps},
        "eval_images": len(data.val_ids),
        "arms": {},
    }
    for a in arms:
        last = a.curve[-1]
        out["arms"][a.name] = {
            "params": n_params(a.model),
            "steps": a.steps,
            "images": a.images,
            "train_cpu_s": a.cpu,
            "train_wall_s": a.wall,
            "images_per_s": a.images / max(a.wall, 1e-9),
            "cpu_s_per_image": a.cpu / max(a.images, 1),
            "final": {k: v for k, v in last.items() if k != "examples"},
            "curve": [{k: v for k, v in row.items() if k not in PER_IMAGE} for row in a.curve],
        }
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "tiny_cpu.yaml"), help="mmgen config (model, train)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every arm")
    p.add_argument("--arm", action="append", default=[], metavar="NAME=K=V[,K=V]", help="an extra mmgen arm")
    p.add_argument(
        "--baseline-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides of the baseline only: train.*, data.captions_per_image, and the "
        "encoder's patch_size / depth / num_heads and decoder's n_layer, which shape the baseline (its width is "
        "then chosen to match mmgen's parameter count)",
    )
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--no-default-arm", action="store_true", help="only the --arm variants of mmgen")
    p.add_argument("--data-dir", help="synthetic scenes (made here unless already present)")
    p.add_argument(
        "--suite",
        nargs="+",
        metavar="NAME",
        help="run every distribution named (or 'design', 'held-out', 'all') x --seeds, --jobs at a time, and "
        "summarise (scripts/compare_suite.py); scenes go under --data-root",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="with --suite: the seeds of every run")
    p.add_argument("--jobs", type=int, default=1, help="with --suite: runs at a time")
    p.add_argument("--data-root", default="runs/suite-data", help="with --suite: a scenes folder per run under it")
    p.add_argument("--difficulty", choices=tuple(difficulties()), default="hard", help="the scenes")
    p.add_argument(
        "--scene-size",
        type=int,
        help="side of the stored scenes (default: the config's image size); every arm resizes them to its own",
    )
    p.add_argument("--n-train", type=int, default=10000)
    p.add_argument("--n-val", type=int, default=500)
    p.add_argument("--seed", type=int, default=0, help="weights, batch order and caption sampling")
    p.add_argument("--data-seed", type=int, default=0, help="the scenes synthesised into --data-dir")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=1500, help="equal images: steps of every arm")
    budget.add_argument("--cpu-seconds", type=float, default=None, help="equal training CPU-seconds per arm")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the same for every arm)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: bf16 autocast, GPU clock")
    p.add_argument("--eval-every", type=int, default=500, help="steps between evaluations (0: only at the end)")
    p.add_argument("--eval-images", type=int, default=500)
    p.add_argument("--eval-batch", type=int, default=100)
    p.add_argument("--beams", type=int, default=3)
    p.add_argument("--out", default="runs/compare", help="output directory: result.json, curves.png")
    p.add_argument("--save-models", action="store_true", help="also write each arm's final weights (NAME.safetensors)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.suite:
        from compare_suite import run_suite

        return run_suite(args, sys.argv[1:] if argv is None else list(argv))
    if not args.data_dir:
        raise SystemExit("compare_baseline: --data-dir is required (or --suite)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("compare_baseline: --device cuda, but torch sees no CUDA GPU")
    if args.no_default_arm and args.no_baseline and not args.arm:
        raise SystemExit("compare_baseline: --no-default-arm and --no-baseline without an --arm leave nothing to run")
    result = run(args)
    result["beams"] = args.beams
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for a in result.pop("_arms", []):
        from safetensors.torch import save_model

        with averaged(a.average, a.model):
            save_model(a.model, str(out / f"{a.name}.safetensors"))
    (out / "result.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "curves.png")
    print_table(result)
    print(f"wrote {out / 'result.json'} and {out / 'curves.png'}")
    return result


if __name__ == "__main__":
    main()
