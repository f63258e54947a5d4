#!/usr/bin/env python
"""Where does an object's colour get lost? A linear read-out of it from the image tokens.

One-object scenes of a suite distribution (its palette, backgrounds and sizes) are encoded by each arm: mmgen
variants built from the config with ``--arm NAME=KEY=VALUE,...`` and the matched VisionEncoderDecoder baseline
of scripts/compare_baseline.py, at random init or with the weights a compare_baseline run saved
(``--models DIR``: ``DIR/NAME.safetensors``). A ridge classifier is fitted on the encoder's output tokens to
the object's colour word (and, apart, its shape word) and scored on held-out scenes, twice: from the token
whose patch holds the object's centre, and from all tokens. The scenes are drawn once, in memory.

  python scripts/probe_colour.py --distribution hue-flat --arm gn=model.encoder.stem_norm=group \\
      --arm none=model.encoder.stem_norm=none --models runs/suite/hue-flat-s0
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from compare_baseline import build_baseline, build_mmgen, n_params, parse_args, prepare_data  # noqa: E402

from mmgen.config import load_config  # noqa: E402


def scenes(name: str, n: int, size: int, seed: int):
    """``n`` one-object scenes of distribution ``name``: uint8 pixels (n, 3, size, size), scenes, captions."""
    from mmgen.scenes.suite import SUITE

    d = replace(SUITE[name], layouts={"single": 1.0})
    px = torch.empty((n, 3, size, size), dtype=torch.uint8)
    out, caps = [], []
    for k in range(n):
        rng = np.random.default_rng([seed, 7, k])
        scene = d.sample_scene(rng)
        px[k] = torch.from_numpy(np.asarray(d.draw_scene(scene, size, rng)).copy()).permute(2, 0, 1)
        out.append(scene)
        caps += d.scene_captions(scene)
    return px, out, caps


@torch.inference_mode()
def tokens(model, kind: str, px: torch.Tensor, mean, std) -> torch.Tensor:
    """The encoder's output tokens on the patch grid, (B, N, C)."""
    out = []
    for s in range(0, len(px), 100):
        x = (px[s : s + 100].float() / 255.0 - mean) / std
        if kind == "mmgen":
            out.append(model.image_features(x))
        else:
            hidden = model.encoder(pixel_values=x).last_hidden_state  # (B, 1 + N, C): the class token first
            out.append(hidden[:, 1:])
    return torch.cat(out).float()


def ridge_accuracy(x: torch.Tensor, y: np.ndarray, n_train: int) -> float:
    """Held-out accuracy of a ridge classifier (one-hot targets); the penalty picked on a split of the train."""
    x = x.double()
    x = (x - x[:n_train].mean(0)) / (x[:n_train].std(0) + 1e-6)
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    classes = sorted(set(y.tolist()))
    t = torch.tensor(np.array([[c == v for c in classes] for v in y], dtype=np.float64))
    fit, val = slice(0, int(0.8 * n_train)), slice(int(0.8 * n_train), n_train)

    def solve(rows: slice, lam: float) -> torch.Tensor:
        a = x[rows]
        if a.shape[1] <= a.shape[0]:
            return torch.linalg.solve(a.T @ a + lam * torch.eye(a.shape[1], dtype=a.dtype), a.T @ t[rows])
        return a.T @ torch.linalg.solve(a @ a.T + lam * torch.eye(a.shape[0], dtype=a.dtype), t[rows])

    def acc(w: torch.Tensor, rows: slice) -> float:
        return float(((x[rows] @ w).argmax(1) == t[rows].argmax(1)).double().mean())

    scale = float(x.shape[1])
    lam = max((scale * f for f in (1e-3, 1e-2, 1e-1, 1.0, 10.0)), key=lambda lam: acc(solve(fit, lam), val))
    return acc(solve(slice(0, n_train), lam), slice(n_train, len(x)))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "tiny_cpu.yaml"))
    p.add_argument("--distribution", default="hue-flat")
    p.add_argument("--arm", action="append", default=[], metavar="NAME=K=V[,K=V]")
    p.add_argument("--baseline-set", nargs="*", default=[
        "model.encoder.patch_size=8", "model.encoder.depth=2", "model.decoder.config_overrides.n_layer=2"])  # fmt: skip
    p.add_argument("--models", help="a compare_baseline --save-models folder: NAME.safetensors per arm")
    p.add_argument("--data-dir", help="with --models: the run's scenes (its tokenizer is trained on them again)")
    p.add_argument("--n-train-scenes", type=int, default=8000, help="with --models: the run's --n-train")
    p.add_argument("--n-val-scenes", type=int, default=500, help="with --models: the run's --n-val")
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from mmgen.tokenizer import ensure_special_tokens, train_caption_tokenizer

    cfg = load_config(args.config, [])
    size = cfg.model.encoder.img_size or 64
    px, truth, caps = scenes(args.distribution, args.n, size, args.seed)
    if args.models:  # the run's tokenizer: trained on its scenes' captions as compare_baseline does
        where = ["--data-dir", args.data_dir, "--difficulty", args.distribution, "--data-seed", str(args.seed)]
        run = parse_args([*where, "--n-train", str(args.n_train_scenes), "--n-val", str(args.n_val_scenes)])
        tok = prepare_data(run, cfg).tokenizer
    else:
        tok = ensure_special_tokens(train_caption_tokenizer(caps, "wordlevel", 1000, 1, True))
    arms = []
    for spec in args.arm or ["mmgen="]:
        name, _, over = spec.partition("=")
        torch.manual_seed(args.seed)
        arms.append((name, "mmgen", build_mmgen(load_config(args.config, [o for o in over.split(",") if o]), tok)))
    torch.manual_seed(args.seed)
    base_cfg = load_config(args.config, args.baseline_set)
    arms.append(("VisionEncoderDecoder", "ved", build_baseline(tok, base_cfg, n_params(arms[0][2]))))
    probe = arms[0][2].data_config
    mean, std = (torch.tensor(probe[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    colour = np.array([s["groups"][0]["color"] for s in truth])
    shape = np.array([s["groups"][0]["shape"] for s in truth])
    chance = max(np.mean(colour == c) for c in set(colour))
    state = "trained" if args.models else "random init"
    print(f"{args.distribution}: {args.n} one-object scenes, {len(set(colour))} colours, chance {chance:.3f}; {state}")
    print(f"{'arm':24} {'tokens':>6} {'colour@obj':>10} {'colour@all':>10} {'shape@obj':>9} {'shape@all':>9}")
    for name, kind, model in arms:
        if args.models:
            from safetensors.torch import load_model

            load_model(model, str(Path(args.models) / f"{name}.safetensors"))
        model.eval()
        feats = tokens(model, kind, px, mean, std)  # (B, N, C)
        side = int(round(feats.shape[1] ** 0.5))
        cell = [min(int(s["objects"][0]["y"] * side), side - 1) * side + min(int(s["objects"][0]["x"] * side), side - 1)
                for s in truth]  # fmt: skip
        at_obj = feats[torch.arange(len(feats)), torch.tensor(cell)]  # (B, C)
        flat = feats.reshape(len(feats), -1)
        row = [ridge_accuracy(f, y, args.n_train) for y in (colour, shape) for f in (at_obj, flat)]
        print(f"{name:24} {feats.shape[1]:6d} {row[0]:10.3f} {row[1]:10.3f} {row[2]:9.3f} {row[3]:9.3f}", flush=True)


if __name__ == "__main__":
    main()
