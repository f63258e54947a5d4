"""Rebuild ``assets/``: a few rendered scenes and a tiny trained captioner (a few MB).

    python scripts/make_assets.py                      # trains with the demo's default budget (a few minutes)
    python scripts/make_assets.py --from-demo mmgen-demo   # reuse the model of an earlier `mmgen demo`

Then ``mmgen caption assets/images --model assets/tiny-scenes-model`` answers at once.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def render_images(out: Path, n: int = 4, seed: int = 2024, size: int = 64) -> list[Path]:
    """Scenes the model never saw in training (their own seed), copied as assets/images/scene_K.png."""
    from mmgen.scenes.writer import make_scenes

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        make_scenes(tmp, n, seed=seed, image_size=size)
        files = sorted(Path(tmp, "images").rglob("*.png"))[:n]
        paths = []
        for k, f in enumerate(files, 1):
            dst = out / f"scene_{k}.png"
            shutil.copyfile(f, dst)
            paths.append(dst)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from-demo", type=Path, help="an existing `mmgen demo --out DIR` directory to take the model from")
    p.add_argument("--budget", default="default", choices=("small", "default", "large"))
    p.add_argument("--assets", type=Path, default=ROOT / "assets")
    args = p.parse_args(argv)

    demo_dir = args.from_demo
    if demo_dir is None:
        from mmgen.commands.demo_command import run_demo

        demo_dir = Path(tempfile.mkdtemp(prefix="mmgen-assets-"))
        run_demo(demo_dir, budget=args.budget)
    src = demo_dir / "run" / "best"
    if not src.exists():
        src = demo_dir / "run" / "final"
    dst = args.assets / "tiny-scenes-model"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    images = render_images(args.assets / "images")
    size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
    print(f"model: {dst} ({size / 2**20:.1f} MiB)")
    for path in images:
        print(f"image: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
