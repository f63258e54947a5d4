"""The table and learning curves of scripts/compare_baseline.py's result."""

from __future__ import annotations

from pathlib import Path


def print_table(result: dict) -> None:
    arms = result["arms"]
    keys = [k for k in next(iter(arms.values()))["final"] if k.startswith("scene_") and k != "scene_images"]
    head = f"{'':22} {'params':>9} {'steps':>6} {'img/s':>7} {'cpu ms/img':>10} {'loss':>6} {'BLEU-4':>7} {'CIDEr':>6}"
    print(head + f" {'distinct':>8} " + " ".join(f"{k[6:]:>8}" for k in keys))
    base = arms.get("VisionEncoderDecoder")
    for name, a in arms.items():
        f = a["final"]
        print(
            f"{name:22} {a['params']:9,d} {a['steps']:6d} {a['images_per_s']:7.1f} {1000 * a['cpu_s_per_image']:10.2f} "
            f"{f['loss']:6.3f} {f['Bleu_4']:7.3f} {f['CIDEr']:6.3f} {f['distinct']:8.3f} "
            + " ".join(f"{f.get(k, float('nan')):8.3f}" for k in keys)
        )
    if base:
        for name, a in arms.items():
            if name != "VisionEncoderDecoder":
                ratio = a["final"]["CIDEr"] / max(base["final"]["CIDEr"], 1e-9)
                cost = a["cpu_s_per_image"] / max(base["cpu_s_per_image"], 1e-9)
                print(f"{name}: CIDEr {ratio:.2f}x the baseline's; CPU per image {cost:.2f}x")


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, a in result["arms"].items():
        xs_img = [r["images"] for r in a["curve"]]
        xs_cpu = [r["cpu_s"] for r in a["curve"]]
        ys = [r["CIDEr"] for r in a["curve"]]
        axes[0].plot(xs_img, ys, marker="o", label=name)
        axes[1].plot(xs_cpu, ys, marker="o", label=name)
    axes[0].set_xlabel("training images seen")
    axes[1].set_xlabel(f"training {result.get('clock', 'process CPU seconds')}")
    for ax in axes:
        ax.set_ylabel("CIDEr-D (held-out)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"beam {result.get('beams', '')} captions of {result['eval_images']} held-out scenes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
