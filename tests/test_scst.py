"""SCST: the reward is pycocoevalcap's CIDEr-D, the loss is REINFORCE with a self-critical baseline,
gradients reach only trainable parts, and the reward of a tiny captioner rises on synthetic scenes."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmgen.config import OBJECTIVES, load_config
from mmgen.models import CaptionModel, tiny_model_config
from mmgen.scenes.simple import sample_scene, scene_captions
from mmgen.tokenizer import train_caption_tokenizer
from mmgen.training.objectives import TRAINERS, build_trainer
from mmgen.training.scst import (
    CiderReward,
    Rollout,
    ScstTrainer,
    rollout_losses,
    self_critical_advantages,
)
from mmgen.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.encoder.img_size=32", "model.encoder.embed_dim=64", "model.encoder.num_heads=2",
    "model.decoder.config_overrides={n_layer: 2, n_embd: 64, n_head: 2, n_positions: 64, resid_pdrop: 0.0, "
    "embd_pdrop: 0.0, attn_pdrop: 0.0}",
    "data.synth=null", "data.captions_per_image=1", "data.num_workers=0", "eval.every=0", "train.log_every=1",
    "train.tensorboard=false",
]  # fmt: skip


def _pycoco_cider(refs: dict, candidates: dict) -> np.ndarray:
    """Per-image CIDEr-D from pycocoevalcap's scorer (df and N from the references of these images)."""
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    scorer = CiderScorer(n=4, sigma=6.0)
    for i in refs:
        scorer += (candidates[i], refs[i])
    return scorer.compute_score()[1]


def _candidates(refs: dict, rng: np.random.Generator) -> list[list[str]]:
    """Three raw candidates per image: another image's reference, a shuffled own reference, a prefix."""
    ids = list(refs)
    out = []
    for n, i in enumerate(ids):
        other = refs[ids[(n + 1) % len(ids)]][0]
        own = refs[i][int(rng.integers(len(refs[i])))].split()
        shuffled = " ".join(own[j] for j in rng.permutation(len(own)))
        prefix = " ".join(own[: 1 + n % len(own)]).capitalize() + "."
        out.append([other, shuffled, prefix if n % 7 else ""])
    return out


def _check_against_pycocoevalcap(raw_refs: dict, k: int = 3) -> None:
    reward = CiderReward(raw_refs, backend="python")
    cands = _candidates(raw_refs, np.random.default_rng(0))
    ids = list(raw_refs)
    flat_ids = [i for i in ids for _ in range(k)]
    ours = reward(flat_ids, [c for per_image in cands for c in per_image]).reshape(len(ids), k)
    for j in range(k):  # one pycocoevalcap corpus per sample index: each image once, so df is per image
        tokenized = dict(zip(ids, CiderReward.tokenize([c[j] for c in cands])))
        expected = _pycoco_cider(reward.references, tokenized)
        np.testing.assert_allclose(ours[:, j], expected, rtol=0, atol=1e-9)
    assert ours.max() > 1.0  # not a trivially all-zero comparison


def test_reward_equals_pycocoevalcap_cider_on_scene_captions():
    rng = np.random.default_rng(3)
    refs = {100 + n: scene_captions(sample_scene(rng)) for n in range(60)}
    _check_against_pycocoevalcap(refs)


def test_reward_equals_pycocoevalcap_cider_on_coco_captions(shared_data):
    ann = json.loads((shared_data / "coco-mini" / "captions_val2017.json").read_text())
    refs: dict = {}
    for a in ann["annotations"]:
        refs.setdefault(a["image_id"], []).append(a["caption"])
    _check_against_pycocoevalcap(refs)


def test_self_critical_baselines():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 4.0, 0.0]])
    adv, base = self_critical_advantages(rewards, "mean")
    expected = torch.tensor(
        [[(2 + 3 + 6) / 3, (1 + 3 + 6) / 3, (1 + 2 + 6) / 3, (1 + 2 + 3) / 3], [4 / 3, 4 / 3, 0, 4 / 3]]
    )
    torch.testing.assert_close(base, expected)
    torch.testing.assert_close(adv, rewards - expected)
    adv, base = self_critical_advantages(rewards, "greedy", torch.tensor([2.5, 1.0]))
    torch.testing.assert_close(adv, rewards - torch.tensor([[2.5], [1.0]]))


# --------------------------------------------------------------------------------------------
# the loss against an independent computation, and where its gradient goes
# --------------------------------------------------------------------------------------------


def _tiny_model(encoder_freeze: str, decoder_mode: str, prompt: str = "") -> CaptionModel:
    rng = np.random.default_rng(0)
    captions = [c for _ in range(20) for c in scene_captions(sample_scene(rng))]
    tok = train_caption_tokenizer(captions, "wordlevel", 200)
    torch.manual_seed(0)
    cfg = tiny_model_config(encoder_freeze=encoder_freeze, decoder_mode=decoder_mode, prompt=prompt, depth=1)
    return CaptionModel(cfg, tok).eval()  # eval: no dropout, both computations see the same network


@pytest.mark.parametrize(
    "encoder_freeze, decoder_mode, prompt",
    [("none", "full", ""), ("all", "frozen", "a picture of"), ("all", "lora", "")],
    ids=["everything", "projector-only", "lora"],
)
def test_policy_gradient_loss_matches_a_hand_computation(encoder_freeze, decoder_mode, prompt):
    if decoder_mode == "lora":
        pytest.importorskip("peft")
    model = _tiny_model(encoder_freeze, decoder_mode, prompt)
    b, k, length, v = 2, 3, 5, len(model.tokenizer)
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randn(b, 3, 32, 32, generator=gen)
    tokens = torch.randint(4, v, (b * k, length), generator=gen)  # (B*K, L) regular words
    lengths = torch.tensor([5, 1, 3, 4, 2, 5])  # (B*K,)
    tokens[torch.arange(length) >= lengths[:, None]] = model.tokenizer.pad_token_id
    advantages = torch.randn(b, k, generator=gen)
    start = model.start_ids.expand(b * k, -1)
    mask = torch.cat([torch.ones_like(start), (torch.arange(length) < lengths[:, None]).long()], dim=1)
    inputs = {
        "pixel_values": pixels.repeat_interleave(k, dim=0),
        "input_ids": torch.cat([start, tokens], dim=1),
        "attention_mask": mask,
    }
    zeros = torch.zeros(b, k)
    roll = Rollout(inputs, tokens, lengths, zeros, zeros, advantages, torch.zeros(b * k))
    logits = model(**inputs).logits
    losses = {r: rollout_losses(logits, roll, len(model.start_ids), 1.0, r) for r in ("sum", "mean")}

    seq_logp = []  # one unpadded sequence at a time, log_softmax by hand
    p = len(model.start_ids)
    with torch.no_grad():
        for n in range(b * k):
            ids = torch.cat([model.start_ids, tokens[n, : lengths[n]]])[None]  # (1, P+len)
            logp = torch.log_softmax(model(pixel_values=pixels[n // k][None], input_ids=ids).logits[0].double(), -1)
            seq_logp.append(sum(float(logp[p - 1 + t, tokens[n, t]]) for t in range(int(lengths[n]))))
    adv = advantages.view(-1).tolist()
    expected = {
        "sum": -sum(a * s for a, s in zip(adv, seq_logp)) / (b * k),
        "mean": -sum(a * s / int(n) for a, s, n in zip(adv, seq_logp, lengths)) / (b * k),
    }
    for reduction, (per_sample, _, entropy) in losses.items():
        assert float(per_sample.detach().mean()) == pytest.approx(expected[reduction], rel=1e-5, abs=1e-6), reduction
        assert torch.all(entropy[torch.arange(length) >= lengths[:, None]] == 0)

    losses["sum"][0].mean().backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, name
        else:
            assert param.grad is None, name
    parts = ("encoder", "decoder")
    trainable = {part: any(q.requires_grad for q in getattr(model, part).parameters()) for part in parts}
    assert trainable == {"encoder": encoder_freeze == "none", "decoder": decoder_mode != "frozen"}
    assert any(float(q.grad.abs().sum()) > 0 for q in model.projector.parameters())


# --------------------------------------------------------------------------------------------
# end to end: cross-entropy, then SCST through the trainer
# --------------------------------------------------------------------------------------------

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (230, 220, 40),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "purple": (140, 40, 170),
    "orange": (250, 140, 20),
}
TEMPLATES = ("a {} square", "a plain {} image", "the picture is {}", "a {} background", "an image that is all {}")


def _colour_images(out: Path, n: int) -> Path:
    """A COCO-format toy set: noisy single-colour images, five captions naming the colour.

    A 32-pixel synthetic scene needs far more cross-entropy training than a test can afford before
    its captions depend on the image; a colour is seen after a hundred steps, so SCST has a policy
    worth improving.
    """
    from PIL import Image

    rng = np.random.default_rng(0)
    (out / "images").mkdir(parents=True)
    images, annotations = [], []
    for k in range(n):
        name, rgb = list(COLOURS.items())[k % len(COLOURS)]
        pixels = np.clip(np.array(rgb) + rng.normal(0, 12, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(out / "images" / f"{k}.png")
        images.append({"id": k + 1, "file_name": f"images/{k}.png"})
        annotations += [{"id": len(annotations) + 1, "image_id": k + 1, "caption": t.format(name)} for t in TEMPLATES]
    (out / "captions_train.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return out / "captions_train.json"


def _cfg(run_dir: Path, data: Path, *extra: str):
    return load_config(
        ROOT / "configs" / "tiny_cpu.yaml", [*TINY, f"data.train={data}", f"train.out_dir={run_dir}", *extra]
    )


@pytest.fixture(scope="module")
def xe_run(tmp_path_factory) -> tuple[Path, Path]:
    """(training data, cross-entropy run directory) after 120 steps on 48 colour images."""
    root = tmp_path_factory.mktemp("scst")
    data = _colour_images(root / "data", 48)
    Trainer(_cfg(root / "xe", data, "train.max_steps=120", "train.batch_size=16", "train.warmup_steps=5",
                 "train.save_every=1000", "train.log_every=20")).fit()  # fmt: skip
    return data, root / "xe"


def _scst_cfg(run_dir: Path, xe_run: tuple[Path, Path], *extra: str):
    data, xe = xe_run
    return _cfg(
        run_dir, data, "train.objective=scst", f"train.init_from={xe / 'final'}",
        f"model.tokenizer={{kind: path, name: {xe / 'tokenizer'}}}", "train.batch_size=16", "train.lr=1e-3",
        "train.warmup_steps=0", "train.min_lr_ratio=1.0", "train.save_every=1000", "scst.num_samples=4",
        "scst.max_new_tokens=12", "scst.reference_tokenizer=python", *extra,
    )  # fmt: skip


def test_scst_raises_the_reward_of_a_tiny_captioner(tmp_path, xe_run):
    steps = 30
    trainer = build_trainer(_scst_cfg(tmp_path / "scst", xe_run, f"train.max_steps={steps}"))
    assert isinstance(trainer, ScstTrainer)
    trainer.fit()
    rows = [json.loads(line) for line in (tmp_path / "scst" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "reward" in r]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for r in rows:
        assert set(r) >= {"reward", "baseline", "advantage", "entropy", "length", "loss"}
        assert abs(r["advantage"]) < 1e-5  # the leave-one-out mean baseline averages to the mean reward
    first = np.mean([r["reward"] for r in rows[:5]])
    last = np.mean([r["reward"] for r in rows[-5:]])
    # the stated margin: +0.5 CIDEr-D within 30 steps (about +1.0 to +1.3 over three seeds, from 1.1-1.4)
    assert last > first + 0.5, (first, last)
    assert np.mean([r["entropy"] for r in rows[-5:]]) < np.mean([r["entropy"] for r in rows[:5]])
    assert (tmp_path / "scst" / "final" / "model.safetensors").exists()
    assert (tmp_path / "scst" / "curves.png").exists()


def test_greedy_baseline_is_the_reward_of_the_greedy_caption(tmp_path, xe_run):
    from mmgen.config import GenerationConfig

    trainer = build_trainer(_scst_cfg(tmp_path / "scst", xe_run, "scst.baseline=greedy", "scst.num_samples=3"))
    batch = next(iter(trainer.batches.epoch(0, 0)))[0]
    torch.manual_seed(0)
    roll = trainer.rollout(batch)
    b = len(batch["image_ids"])
    assert roll.tokens.shape[0] == b * 3 and roll.rewards.shape == roll.baselines.shape == (b, 3)
    greedy = trainer.model.eval().generate(batch["pixel_values"], GenerationConfig(num_beams=1, max_new_tokens=12))
    expected = trainer.reward(batch["image_ids"], greedy.best)  # (B,)
    np.testing.assert_allclose(roll.baselines.numpy(), np.repeat(expected[:, None], 3, 1), rtol=1e-6)
    torch.testing.assert_close(roll.advantages, roll.rewards - roll.baselines)
    # the teacher-forcing inputs are BOS/prompt + the samples, masked after each sample's end
    p = len(trainer.model.start_ids)
    assert torch.equal(roll.inputs["input_ids"][:, p:], roll.tokens)
    assert torch.equal(roll.inputs["attention_mask"][:, p:].sum(1), roll.lengths)


def test_scst_needs_build_trainer_and_valid_settings(tmp_path):
    from mmgen.config import ConfigError

    with pytest.raises(ConfigError, match="scst.num_samples"):
        load_config(None, ["scst.num_samples=1"])
    with pytest.raises(ConfigError, match="scst.baseline"):
        load_config(None, ["scst.baseline=max"])
    assert load_config(None, ["scst.num_samples=1", "scst.baseline=greedy"]).scst.num_samples == 1
    with pytest.raises(ConfigError, match="train.objective"):
        load_config(None, ["train.objective=rl"])
    with pytest.raises(ConfigError, match="train.objective"):
        load_config(None, ["train.objective=scst", "data.streaming=true"])
    with pytest.raises(ValueError, match="build_trainer"):
        Trainer(load_config(None, ["train.objective=scst", f"train.out_dir={tmp_path}"]))
    assert tuple(TRAINERS) == OBJECTIVES and TRAINERS["scst"].__name__ == "ScstTrainer"  # every objective's


def test_scst_preset_parses():
    cfg = load_config(ROOT / "configs" / "scenes_scst.yaml")
    gpu = load_config(ROOT / "configs" / "scenes_gpu.yaml")
    assert cfg.train.objective == "scst" and cfg.train.init_from == "runs/scenes_gpu/best"
    assert cfg.scst.num_samples == 5 and cfg.eval.generation.num_beams == 3
    assert 1e-5 <= cfg.train.lr <= 5e-5
    assert (cfg.model.encoder, cfg.model.projector, cfg.model.decoder) == (
        gpu.model.encoder, gpu.model.projector, gpu.model.decoder,
    )  # fmt: skip


def test_fsdp_refuses_scst(tmp_path, xe_run, monkeypatch):
    from mmgen import distributed

    monkeypatch.setattr(distributed, "is_sharded", lambda model: True)  # as if fully_shard had wrapped it
    with pytest.raises(ValueError, match="train.distributed: fsdp trains train.objective=xe only"):
        build_trainer(_scst_cfg(tmp_path / "scst", xe_run))
