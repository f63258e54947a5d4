"""Training loop: loss goes down, exact resume, DDP == single process, non-finite steps, presets."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmgen.config import load_config
from mmgen.scenes.writer import make_scenes
from mmgen.training.run_data import batch_inputs
from mmgen.training.trainer import NonFiniteLossError, Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.encoder.img_size=32",
    "model.encoder.embed_dim=64",
    "model.encoder.num_heads=2",
    "model.decoder.config_overrides={n_layer: 2, n_embd: 64, n_head: 2, n_positions: 64, resid_pdrop: 0.0, "
    "embd_pdrop: 0.0, attn_pdrop: 0.0}",
    "data.synth=null",
    "data.num_workers=0",
    "eval.every=0",
    "train.log_every=1",
    "train.warmup_steps=5",
    "train.tensorboard=false",
]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    make_scenes(out, 96, seed=0, image_size=32)
    return out / "captions_train.json"


def _cfg(tmp_path, scenes, *extra):
    return load_config(
        ROOT / "configs" / "tiny_cpu.yaml", [*TINY, f"data.train={scenes}", f"train.out_dir={tmp_path / 'run'}", *extra]
    )


def _losses(run_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}  # a resumed step overwrites the interrupted one


def _interrupt_at(cfg, step: int, monkeypatch) -> None:
    """Train ``cfg`` and stop it with a KeyboardInterrupt once it reaches ``step`` (as Ctrl-C would)."""
    original = Trainer._after_step

    def interrupt(self, start):
        if self.state.step == step:
            raise KeyboardInterrupt
        return original(self, start)

    monkeypatch.setattr(Trainer, "_after_step", interrupt)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg).fit()
    monkeypatch.setattr(Trainer, "_after_step", original)


def test_tiny_run_lowers_the_loss(tmp_path, scenes):
    cfg = _cfg(tmp_path, scenes, "train.max_steps=60", "train.batch_size=16", "train.save_every=1000")
    Trainer(cfg).fit()
    losses = list(_losses(cfg.train.out_dir).values())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first / 1.8, (first, last)  # the stated factor: at least 1.8x lower after 60 steps
    run = Path(cfg.train.out_dir)
    for name in ("config.yaml", "tokenizer/tokenizer.json", "final/model.safetensors", "curves.png"):
        assert (run / name).exists(), name


@pytest.mark.parametrize("extra", [(), ("train.ema_decay=0.8",)], ids=["plain", "weight-average"])
def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path, scenes, monkeypatch, extra):
    # with train.ema_decay, final/ holds the average: equal bytes mean the average went on exactly too
    common = ("train.max_steps=10", "train.batch_size=16", "train.save_every=4", "train.keep_last=5", *extra)
    full = _cfg(tmp_path / "a", scenes, *common)
    Trainer(full).fit()
    reference = _losses(full.train.out_dir)

    cut = _cfg(tmp_path / "b", scenes, *common)
    _interrupt_at(cut, 5, monkeypatch)  # after the step-4 checkpoint, mid-epoch (6 steps per epoch)
    with pytest.warns(UserWarning, match=r"metrics.jsonl: removed 1 line\(s\) after step 4"):  # step 5 is redone
        Trainer(cut, resume=cut.train.out_dir).fit()
    rows = [json.loads(line) for line in (Path(cut.train.out_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 11))  # every step once: nothing logged twice
    resumed = _losses(cut.train.out_dir)
    assert resumed == reference  # exact float equality, step by step
    from safetensors.torch import load_file

    a = load_file(Path(full.train.out_dir) / "final" / "model.safetensors")
    b = load_file(Path(cut.train.out_dir) / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _torchrun(scenes, out, port: int, *extra: str) -> subprocess.CompletedProcess:
    """``mmgen train`` on the tiny preset in 2 gloo processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port)]
    cmd += ["-m", "mmgen", "train", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"), *TINY]
    cmd += [f"data.train={scenes}", f"train.out_dir={out}", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def test_two_process_ddp_matches_one_process(tmp_path, scenes):
    common = ["train.max_steps=4", "train.batch_size=16", "train.save_every=1000"]
    single = _cfg(tmp_path / "one", scenes, *common)
    Trainer(single).fit()
    out = tmp_path / "two" / "run"
    proc = _torchrun(scenes, out, 29533, *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _losses(single.train.out_dir), _losses(out)
    assert list(one) == list(two) == [1, 2, 3, 4]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6)


def test_two_process_fsdp_matches_one_process_saves_and_resumes(tmp_path, scenes):
    from mmgen.models import CaptionModel

    common = ["train.batch_size=16", "train.save_every=2", "eval.every=2", f"data.val={scenes}", "eval.max_images=8"]
    common.append("data.allow_overlap=true")  # validation on training images, on purpose
    single = _cfg(tmp_path / "one", scenes, "train.max_steps=4", *common)
    Trainer(single).fit()
    full, part = tmp_path / "fsdp" / "run", tmp_path / "fsdp_resumed" / "run"
    fsdp = ("train.distributed=fsdp", *common)
    proc = _torchrun(scenes, full, 29534, "train.max_steps=4", *fsdp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = _losses(single.train.out_dir), _losses(full)
    assert list(one) == list(two) == [1, 2, 3, 4]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-6)
    for name in ("final", "best", "checkpoints/step_00000004"):  # whole tensors, loadable without FSDP
        a = CaptionModel.from_pretrained(Path(single.train.out_dir) / name).state_dict()
        b = CaptionModel.from_pretrained(full / name).state_dict()
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a), name
    # as if stopped after step 2: resumed from that checkpoint by a new pair of processes, the same steps 3 and 4
    shutil.copytree(full, part, ignore=shutil.ignore_patterns("step_00000004"))
    rows = (full / "metrics.jsonl").read_text().splitlines()
    (part / "metrics.jsonl").write_text("".join(r + "\n" for r in rows if json.loads(r).get("step", 0) <= 2))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29536"]
    cmd += ["-m", "mmgen", "train", "--resume", str(part), "train.max_steps=4"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = _losses(part)
    for step in (3, 4):
        assert resumed[step] == pytest.approx(two[step], rel=1e-6, abs=1e-7)


def test_preloaded_images_give_the_same_run(tmp_path, scenes):
    common = ("train.max_steps=4", "train.batch_size=16", "train.save_every=1000", "data.num_workers=2")
    a = _cfg(tmp_path / "a", scenes, *common)
    b = _cfg(tmp_path / "b", scenes, *common, "data.preload=true")
    Trainer(a).fit()
    Trainer(b).fit()
    assert _losses(b.train.out_dir) == _losses(a.train.out_dir)  # same pixels, same batches: bit-identical


def test_padding_to_the_maximum_length_gives_one_shape_and_the_same_losses(tmp_path, scenes):
    common = ("train.max_steps=3", "train.batch_size=16", "train.save_every=1000")
    a = _cfg(tmp_path / "a", scenes, *common)
    b = _cfg(tmp_path / "b", scenes, *common, "data.pad_to_max_length=true")
    trainer = Trainer(b)
    full = trainer.model.start_ids.numel() + b.model.max_caption_tokens
    shapes = {g[0]["input_ids"].shape[1] for g in trainer.batches.epoch(0, 0)}
    assert shapes == {full}
    Trainer(a).fit()
    trainer.fit()
    la, lb = _losses(a.train.out_dir), _losses(b.train.out_dir)
    assert la.keys() == lb.keys()
    for step in la:
        assert lb[step] == pytest.approx(la[step], rel=1e-5)


def test_padding_to_the_maximum_length_covers_cached_feature_batches(tmp_path, scenes):
    extra = ("train.batch_size=16", "data.pad_to_max_length=true", "train.feature_cache=true")
    extra += ("model.encoder.freeze=all",)
    trainer = Trainer(_cfg(tmp_path, scenes, *extra))
    full = trainer.model.start_ids.numel() + trainer.cfg.model.max_caption_tokens
    batches = [g[0] for g in trainer.batches.epoch(0, 0)]
    assert all("features" in b for b in batches)
    assert {b["input_ids"].shape[1] for b in batches} == {full}


def test_time_schedule_ends_the_cosine_with_the_budget(tmp_path, scenes):
    cfg = _cfg(
        tmp_path,
        scenes,
        "train.max_steps=100000",
        "train.batch_size=16",
        "train.warmup_steps=2",
        "train.max_time=6",
        "train.schedule=time",
        "train.min_lr_ratio=0.1",
    )
    trainer = Trainer(cfg)
    base = cfg.train.lr
    trainer.state.step = 1
    trainer._follow_the_clock(2.0)  # still warming up: linear warmup by steps
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(base)
    trainer.state.step = 2
    trainer._follow_the_clock(2.0)  # warmup done at t=2 s: 4 s of budget left for the cosine
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(base)
    trainer._follow_the_clock(4.0)  # half of it spent
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(base * 0.55)
    trainer._follow_the_clock(6.0)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(base * 0.1)

    trainer = Trainer(cfg)  # a real run stops on time, with the rate decayed to (nearly) its floor
    ticks = iter(range(10**9))
    trainer.clock = lambda: 0.05 * next(ticks)  # a clock that advances per reading, whatever the machine's speed
    trainer.fit()
    rows = [json.loads(line) for line in (Path(cfg.train.out_dir) / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert 5 < len(lrs) < 100000 and lrs[-1] < 0.3 * base
    assert all(b <= a + 1e-12 for a, b in zip(lrs[2:], lrs[3:]))  # decays monotonically after warmup


def test_label_smoothing_is_the_loss_the_run_trains_on(tmp_path, scenes):
    cfg = _cfg(tmp_path, scenes, "train.max_steps=1", "train.batch_size=16", "train.label_smoothing=0.1")
    trainer = Trainer(cfg)
    assert trainer.levers.forward_kwargs == {"label_smoothing": 0.1}
    (batch,) = next(iter(trainer.batches.epoch(0, 0)))
    inputs = batch_inputs(batch, trainer.device)
    with torch.no_grad():  # the initial weights: the first step's loss (no dropout in the preset)
        smoothed = trainer.model(**inputs, label_smoothing=0.1).loss.item()
        plain = trainer.model(**inputs).loss.item()
    trainer.fit()
    assert _losses(cfg.train.out_dir)[1] == pytest.approx(smoothed, rel=1e-5)
    assert abs(smoothed - plain) > 1e-3


def test_gradient_accumulation_matches_the_full_batch(tmp_path, scenes):
    common = ("train.max_steps=3", "train.batch_size=16", "train.save_every=1000")
    a = _cfg(tmp_path / "a", scenes, *common)
    b = _cfg(tmp_path / "b", scenes, *common, "train.grad_accum=4")
    Trainer(a).fit()
    Trainer(b).fit()
    la, lb = _losses(a.train.out_dir), _losses(b.train.out_dir)
    for step in la:
        assert lb[step] == pytest.approx(la[step], rel=1e-5)


def test_non_finite_loss_is_skipped_then_stops_the_run(tmp_path, scenes, monkeypatch):
    cfg = _cfg(tmp_path, scenes, "train.max_steps=20", "train.batch_size=16", "train.max_bad_steps=3")
    trainer = Trainer(cfg)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    real_forward = type(trainer.model).forward

    def nan_forward(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(type(trainer.model), "forward", nan_forward)
    with pytest.warns(UserWarning, match="non-finite loss"):
        with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
            trainer.fit()
    assert trainer.state.skipped_steps == 3
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))  # no update was applied


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_preset_builds(path):
    from mmgen.models import CaptionModel
    from mmgen.tokenizer import train_caption_tokenizer

    cfg = load_config(path, ["model.encoder.pretrained=false", "model.decoder.pretrained=false"])
    tok = train_caption_tokenizer(["a red circle left of a blue square"], "wordlevel", 50)
    model = CaptionModel(cfg.model, tok)
    summary = model.parameter_summary()
    assert summary["all"]["trainable"] > 0
    if cfg.model.encoder.freeze == "all":
        assert summary["encoder"]["trainable"] == 0
    if cfg.model.decoder.mode == "frozen":
        assert summary["decoder"]["trainable"] == 0


def _pairwise_loss(model, records, max_caption_tokens: int, skip: frozenset = frozenset()) -> tuple[float, int]:
    """Brute force: one (image, reference) pair at a time, float transform, the model's own loss."""
    from PIL import Image

    from mmgen.data.transforms import build_transform

    tok, transform = model.tokenizer, build_transform(model.data_config)
    total, tokens = 0.0, 0
    with torch.no_grad():
        for r in records:
            if r.image_id in skip:
                continue
            px = transform(Image.open(r.image).convert("RGB"))[None]
            for c in r.captions:
                caption = tok(c, add_special_tokens=False)["input_ids"][: max_caption_tokens - 1]
                ids = torch.tensor([[tok.bos_token_id, *caption, tok.eos_token_id]])
                labels = ids.clone()
                labels[:, 0] = -100
                total += float(model(px, ids, labels=labels).loss) * (ids.shape[1] - 1)
                tokens += ids.shape[1] - 1
    return total / max(tokens, 1), tokens


def test_validation_loss_is_the_mean_token_loss_over_every_reference(tmp_path, scenes):
    from mmgen.training import validation

    cfg = _cfg(
        tmp_path, scenes, f"data.val={scenes}", "eval.max_images=5", "eval.batch_size=4", "data.allow_overlap=true"
    )
    trainer = Trainer(cfg)
    model = trainer.model.eval()
    got = validation.validation_loss(model, trainer.data.val_records, cfg, trainer.device)
    want, tokens = _pairwise_loss(model, trainer.data.val_records, cfg.model.max_caption_tokens)
    assert len(trainer.data.val_records) == 5 and tokens > 5 * 5 * 5
    assert got == pytest.approx(want, rel=1e-5)


def test_undecodable_validation_images_are_named_counted_and_left_out(tmp_path, scenes):
    from mmgen.training import validation

    val = tmp_path / "val"
    make_scenes(val, 5, seed=4, image_size=32)
    ann = json.loads((val / "captions_train.json").read_text())
    broken = ann["images"][1]
    path = val / broken["file_name"]
    path.write_bytes(path.read_bytes()[:40])  # a truncated PNG
    cfg = _cfg(
        tmp_path, scenes, f"data.val={val / 'captions_train.json'}", "eval.batch_size=4",
        "eval.generation={num_beams: 1, max_new_tokens: 4}",
    )  # fmt: skip
    trainer = Trainer(cfg)
    trainer.model.eval()
    with pytest.warns(UserWarning, match=r"1 validation image\(s\) could not be decoded") as caught:
        scores = validation.evaluate(trainer.model, trainer.data.val_records, cfg, trainer.device)
    (message,) = [str(w.message) for w in caught if "could not be decoded" in str(w.message)]  # any other warnings
    assert str(broken["id"]) in message and broken["file_name"].split("/")[-1] in message
    assert scores["failed_images"] == 1.0
    want, _ = _pairwise_loss(trainer.model, trainer.data.val_records, cfg.model.max_caption_tokens, {broken["id"]})
    assert scores["loss"] == pytest.approx(want, rel=1e-5)  # the four good images, every reference


def test_eval_metric_loss_keeps_the_lowest_validation_loss(tmp_path, scenes):
    cfg = _cfg(
        tmp_path, scenes, f"data.val={scenes}", "data.allow_overlap=true", "eval.max_images=4", "eval.every=3",
        "eval.metric=loss",
        "train.max_steps=6", "train.batch_size=8", "train.save_every=100",
        "eval.generation={num_beams: 1, max_new_tokens: 4}",
    )  # fmt: skip
    Trainer(cfg).fit()
    run = Path(cfg.train.out_dir)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["eval"]["loss"] for r in rows if "eval" in r}
    assert sorted(evals) == [3, 6] and all(v > 0 for v in evals.values())
    best = json.loads((run / "best" / "metrics.json").read_text())
    step = min(evals, key=evals.get)
    assert best["step"] == step and best["loss"] == evals[step]  # best/ exists and holds the lowest-loss eval


# -- which records a run trains and validates on ------------------------------------------------------------------


def _prepare(tmp_path, *overrides):
    from mmgen.distributed import DistState
    from mmgen.training import run_data as tdata

    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml", [*TINY, f"train.out_dir={tmp_path / 'run'}", *overrides])
    return tdata.prepare(cfg, tmp_path / "run", DistState())


def _table(path: Path, rows: list[tuple[str, str | None]]) -> Path:
    """A JSONL table: (image name, split or None) per row, two captions each."""
    lines = []
    for name, split in rows:
        row = {
            "image": f"images/{name}",
            "captions": [f"{name} one", f"{name} two"],
            **({"split": split} if split else {}),
        }
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_table_split_column_keeps_validation_images_out_of_training(tmp_path):
    rows = [("a.png", "train"), ("b.png", "val"), ("c.png", "train"), ("d.png", "test"), ("e.png", "restval")]
    table = _table(tmp_path / "all.jsonl", rows)
    (tmp_path / "all.csv").write_text("image,caption,split\n" + "".join(f"images/{n},{n} one,{s}\n" for n, s in rows))
    for path in (table, tmp_path / "all.csv"):  # data.val is the same file with another split: works
        data = _prepare(tmp_path, f"data.train={path}", f"data.val={path}")
        assert sorted(Path(r.image).name for r in data.train_records) == ["a.png", "c.png", "e.png"], path
        assert [Path(r.image).name for r in data.val_records] == ["b.png"], path
    data = _prepare(tmp_path, f"data.train={table}", f"data.val={table}", "data.val_split=test", "data.restval=false")
    assert sorted(Path(r.image).name for r in data.train_records) == ["a.png", "c.png"]
    assert [Path(r.image).name for r in data.val_records] == ["d.png"]
    with pytest.raises(
        ValueError, match=r"all\.jsonl: no record is in split 'valid2'; the splits it has are 'restval'"
    ):
        _prepare(tmp_path, f"data.train={table}", f"data.val={table}", "data.val_split=valid2")


def test_a_saved_hf_dataset_split_column_keeps_validation_images_out_of_training(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"image": str(tmp_path / f"{i}.png"), "caption": f"c {i}", "image_id": i, "split": s} for i, s in
            enumerate(["train", "val", "train", "val", "test"])]  # fmt: skip
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    data = _prepare(tmp_path, f"data.train={tmp_path / 'hf'}", f"data.val={tmp_path / 'hf'}")
    assert sorted(r.image_id for r in data.train_records) == [0, 2]
    assert sorted(r.image_id for r in data.val_records) == [1, 3]
    with pytest.raises(ValueError, match=r"2 of the 2 validation images are also training images .*image_id 0"):
        _prepare(tmp_path, f"data.train={tmp_path / 'hf'}", f"data.val={tmp_path / 'hf'}", "data.val_split=train")


def test_validation_images_that_are_training_images_are_refused_naming_them(tmp_path):
    table = _table(tmp_path / "plain.jsonl", [(f"{i}.png", None) for i in range(8)])  # no split information
    with pytest.raises(ValueError, match=r"8 of the 8 validation images are also training images .*images[/\\]0\.png; "
                       r".*; \.\.\..*data\.allow_overlap=true"):  # fmt: skip
        _prepare(tmp_path, f"data.train={table}", f"data.val={table}")
    both = _table(tmp_path / "both.jsonl", [("a.png", "train"), ("b.png", "val"), ("sub/../a.png", "val")])
    with pytest.raises(ValueError, match=r"1 of the 2 validation images .*images[/\\]a\.png"):
        _prepare(tmp_path, f"data.train={both}", f"data.val={both}")
    data = _prepare(tmp_path, f"data.train={table}", f"data.val={table}", "data.allow_overlap=true")  # on purpose
    assert len(data.val_records) == 8


def test_an_image_id_in_two_sources_overlaps_only_when_it_is_the_same_picture(tmp_path):
    # train: a COCO file; val: another COCO file numbered from 0 too, with other pictures -- no overlap
    make_scenes(tmp_path / "t", 6, seed=0, image_size=16)
    make_scenes(tmp_path / "v", 6, seed=1, image_size=16)
    train, val = tmp_path / "t" / "captions_train.json", tmp_path / "v" / "captions_train.json"
    data = _prepare(tmp_path, f"data.train={train}", f"data.val={val}")
    assert len(data.val_records) == 6
    # the same pictures under other names (COCO train2017 vs Karpathy's val2014 copies): refused by image_id
    ann = json.loads(train.read_text())
    for im in ann["images"]:
        copy = tmp_path / "copies" / f"copy_{Path(im['file_name']).name}"
        copy.parent.mkdir(exist_ok=True)
        shutil.copy(tmp_path / "t" / im["file_name"], copy)
        im["file_name"] = f"copies/{copy.name}"
    (tmp_path / "copied.json").write_text(json.dumps(ann))
    first = ann["images"][0]["id"]
    with pytest.raises(ValueError, match=rf"6 of the 6 validation images .*image_id {first} \(.*copy_"):
        _prepare(tmp_path, f"data.train={train}", f"data.val={tmp_path / 'copied.json'}")


def test_a_users_data_train_wins_over_a_presets_synth_and_config_yaml_says_so(tmp_path, scenes, capsys):
    from mmgen.config import load_config as load

    cfg = load_config(  # tiny_cpu.yaml sets data.synth; the user names a dataset on top of it
        ROOT / "configs" / "tiny_cpu.yaml",
        [*[o for o in TINY if o != "data.synth=null"], f"data.train={scenes}", f"train.out_dir={tmp_path / 'run'}"],
    )
    assert cfg.data.synth and cfg.data.train == str(scenes)
    trainer = Trainer(cfg)
    out = capsys.readouterr().out
    assert out.count("data.synth (synthetic scenes) is dropped") == 1 and f"data.train={scenes}" in out
    saved = load(tmp_path / "run" / "config.yaml")
    assert saved.data.synth is None and saved.data.train == str(scenes) and trainer.cfg.data.synth is None
    assert not (tmp_path / "run" / "data").exists()  # no scenes were synthesised
    assert len(trainer.data.train_records) == 96 and trainer.data.val_records is None


# -- data.streaming -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_scenes(scenes):
    """The scenes as a saved HF dataset: 64 training and 32 validation rows (a split column)."""
    datasets = pytest.importorskip("datasets")
    ann = json.loads(scenes.read_text())
    caps: dict = {}
    for a in ann["annotations"]:
        caps.setdefault(a["image_id"], []).append(a["caption"])
    rows = [
        {"image": {"bytes": (scenes.parent / im["file_name"]).read_bytes(), "path": None}, "captions": caps[im["id"]],
         "image_id": im["id"], "split": "train" if k < 64 else "val"}
        for k, im in enumerate(ann["images"])
    ]  # fmt: skip
    feats = datasets.Features({"image": datasets.Image(), "captions": datasets.List(datasets.Value("string")),
                               "image_id": datasets.Value("int64"), "split": datasets.Value("string")})  # fmt: skip
    out = scenes.parent / "hf_scenes"
    datasets.Dataset.from_list(rows, features=feats).save_to_disk(str(out))
    return out


def test_streaming_trains_from_a_stream_across_epochs_and_resumes_exactly(tmp_path, hf_scenes, monkeypatch):
    from torch.utils.data import IterableDataset

    from mmgen.data.hf import StreamingRecords

    common = (
        f"data.train={hf_scenes}",
        "data.streaming=true",
        "train.batch_size=16",
        "train.max_steps=6",
        "train.save_every=2",
        "train.keep_last=5",
    )  # fmt: skip  -- 64 training rows: 4 steps per epoch
    full = _cfg(tmp_path / "a", hf_scenes, *common)
    trainer = Trainer(full)
    assert trainer.data.streaming and isinstance(trainer.data.train_records, StreamingRecords)
    assert not hasattr(trainer.data.train_records, "__len__")  # nothing can ask a stream for its length
    trainer.fit()
    assert isinstance(trainer.batches.dataset, IterableDataset)
    rows = [json.loads(line) for line in (Path(full.train.out_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["epoch"]) for r in rows] == [(1, 0), (2, 0), (3, 0), (4, 0), (5, 1), (6, 1)]
    reference = _losses(full.train.out_dir)

    cut = _cfg(tmp_path / "b", hf_scenes, *common)
    _interrupt_at(cut, 3, monkeypatch)  # after the step-2 checkpoint, mid-epoch
    Trainer(cut, resume=cut.train.out_dir).fit()
    assert _losses(cut.train.out_dir) == reference  # the consumed batches were skipped, the same ones followed


def test_streaming_a_file_source_says_it_is_read_whole(tmp_path, scenes, capsys):
    trainer = Trainer(_cfg(tmp_path, scenes, "data.streaming=true"))
    assert "is not a Hugging Face dataset source; it is read whole" in capsys.readouterr().out
    assert not trainer.data.streaming and len(trainer.data.train_records) == 96


def test_a_stream_shorter_than_one_step_is_an_error_not_an_endless_loop(tmp_path, hf_scenes):
    cfg = _cfg(tmp_path, hf_scenes, f"data.train={hf_scenes}", "data.streaming=true", "data.train_split=val",
               "train.batch_size=48", "train.max_steps=2")  # fmt: skip
    with pytest.raises(ValueError, match=r"holds less than one optimizer step \(train.batch_size=48\)"):
        Trainer(cfg).fit()


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _strict(name: str):
    raise AssertionError(f"metrics.jsonl is not strict JSON: {name}")


def _renamed_captions(scenes: Path, word: str) -> Path:
    """The scenes with every caption starting with a word their tokenizer has never seen."""
    ann = json.loads(scenes.read_text())
    for a in ann["annotations"]:
        a["caption"] = f"{word} {a['caption']}"
    path = scenes.with_name(f"captions_{word}.json")  # beside the images, which the file names relatively
    path.write_text(json.dumps(ann))
    return path


def test_a_new_run_into_a_used_out_dir_is_refused_and_overwrite_starts_clean(tmp_path, scenes, capsys):
    from transformers import AutoTokenizer

    from mmgen.commands.cli import main

    first = _cfg(
        tmp_path, scenes, "train.max_steps=4", "train.batch_size=16", "train.save_every=2", "train.keep_last=5"
    )
    run = Path(first.train.out_dir)
    trainer = Trainer(first)
    assert json.loads((run / "train.lock").read_text())["pid"] == os.getpid()  # held while the trainer lives
    trainer.fit()
    assert not (run / "train.lock").exists()
    argv = ["train", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"), *TINY, f"train.out_dir={run}"]
    argv += [f"data.train={_renamed_captions(scenes, 'zorblax')}", "train.max_steps=3", "train.batch_size=16"]
    argv += ["train.save_every=1000"]
    before = _snapshot(run)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run" in err and "--overwrite" in err, err
    assert _snapshot(run) == before

    assert main([*argv[:1], "--overwrite", *argv[1:]]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # the earlier run's rows are gone
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000003"]
    for tok_dir in (run / "tokenizer", run / "final" / "tokenizer"):  # trained on the new captions
        tok = AutoTokenizer.from_pretrained(str(tok_dir))
        ids = tok("zorblax", add_special_tokens=False)["input_ids"]
        assert ids and tok.unk_token_id not in ids


def test_resuming_a_finished_run_writes_nothing_unless_max_steps_is_raised(tmp_path, scenes, capsys):
    from mmgen.commands.cli import main
    from mmgen.training.logs import plot_curves

    cfg = _cfg(
        tmp_path, scenes, "train.max_steps=3", "train.batch_size=16", "train.save_every=1000", "train.tensorboard=true",
        f"data.val={scenes}", "data.allow_overlap=true", "eval.max_images=4", "eval.batch_size=4",
        "eval.generation={num_beams: 1, max_new_tokens: 4}",
    )  # fmt: skip
    Trainer(cfg).fit()
    run = Path(cfg.train.out_dir)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # a process killed in the middle of a line
    before = _snapshot(run)
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "the run is finished (step 3, train.max_steps=3)" in out, out
    assert _snapshot(run) == before  # no evaluation, no metrics row, no config, no TensorBoard event
    (run / "curves.png").unlink()
    with pytest.warns(UserWarning, match="skipped a torn last line"):
        plot_curves(run, ("loss",), "training loss")
    assert (run / "curves.png").exists()

    with pytest.warns(UserWarning, match="removed a torn last line"):
        assert main(["train", "--resume", str(run), "train.max_steps=5"]) == 0  # a raised max_steps continues
    rows = [json.loads(line, parse_constant=_strict) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in rows if "eval" in r] == [3, 5]  # step 3 is not evaluated twice
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0  # its config.yaml now says 5: finished again
    assert "the run is finished (step 5, train.max_steps=5)" in capsys.readouterr().out


def test_a_refused_resume_writes_nothing_and_the_run_still_resumes(tmp_path, scenes, capsys):
    from mmgen.commands.cli import main

    cfg = _cfg(tmp_path, scenes, "train.max_steps=3", "train.batch_size=16", "train.save_every=2")
    Trainer(cfg).fit()
    run = Path(cfg.train.out_dir)
    before = _snapshot(run)
    capsys.readouterr()
    for override, message in {
        "model.decoder.config_overrides.n_embd=32": "model.decoder.config_overrides.n_embd: 64 in the run, 32 now: "
        "a resumed run keeps its model",
        "model.prompt=a photo of": "model.prompt: '' in the run, 'a photo of' now",
        "train.ema_decay=0.9": "train.ema_decay: the run was trained without a weight average and is resumed with one",
    }.items():
        assert main(["train", "--resume", str(run), override, "train.max_steps=5"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and err.startswith(f"mmgen train: config error: --resume {run}")
        assert _snapshot(run) == before  # refused before anything was written: config.yaml as it was
    assert main(["train", "--resume", str(run), "train.max_steps=4", "model.decoder.gradient_checkpointing=true"]) == 0
    assert "resumed from" in capsys.readouterr().out  # the checkpoints were never blamed


def test_resuming_a_run_killed_before_its_first_checkpoint_starts_over_and_says_so(
    tmp_path, scenes, monkeypatch, capsys
):
    common = ("train.max_steps=3", "train.batch_size=16", "train.save_every=100")
    full = _cfg(tmp_path / "a", scenes, *common)
    Trainer(full).fit()
    cut = _cfg(tmp_path / "b", scenes, *common)
    _interrupt_at(cut, 2, monkeypatch)
    run = Path(cut.train.out_dir)
    assert not (run / "checkpoints").exists() and (run / "metrics.jsonl").read_text().count("\n") == 2
    capsys.readouterr()
    with pytest.warns(UserWarning, match=r"removed 2 line\(s\) after step 0"):
        Trainer(cut, resume=run).fit()
    assert f"{run}: no checkpoint yet (the run stopped before its first save" in capsys.readouterr().out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # not 1, 2, then 1, 2, 3 appended
    assert _losses(run) == _losses(full.train.out_dir)  # the same run as one never interrupted


def test_a_diverging_run_stops_before_saving_non_finite_weights(tmp_path, scenes):
    from mmgen.config import ConfigError
    from mmgen.training.checkpoint import NonFiniteWeightsError

    for bad in (".inf", ".nan", "-1"):
        with pytest.raises(ConfigError, match="train.lr: (must be|expected) a finite number"):
            _cfg(tmp_path, scenes, f"train.lr={bad}")
    cfg = _cfg(
        tmp_path, scenes, "train.max_steps=10", "train.batch_size=16", "train.save_every=3", "train.max_bad_steps=9"
    )
    trainer = Trainer(cfg)
    for g in trainer.optimizer.param_groups:  # what train.lr=inf did before the config refused it
        g["lr"] = g["initial_lr"] = float("inf")
    trainer.scheduler.base_lrs = [float("inf")] * len(trainer.scheduler.base_lrs)
    with pytest.warns(UserWarning, match="non-finite loss"):
        with pytest.raises(NonFiniteWeightsError, match=r"step 3: weights hold NaN or infinite values") as caught:
            trainer.fit()
    assert "checkpoints/step_00000003" in str(caught.value) and "train.lr" in str(caught.value)
    run = Path(cfg.train.out_dir)
    assert not (run / "checkpoints").exists() and not (run / "final").exists() and not (run / "train.lock").exists()
    rows = [json.loads(line, parse_constant=_strict) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows]
    assert len(losses) == 3 and losses[0] > 0 and losses[1:] == [None, None]  # skipped steps: null, not NaN


def test_resume_skips_a_damaged_latest_checkpoint_and_matches_the_uninterrupted_run(tmp_path, scenes):
    common = ("train.max_steps=6", "train.batch_size=16", "train.save_every=2", "train.keep_last=5")
    full = _cfg(tmp_path / "a", scenes, *common)
    Trainer(full).fit()
    reference = _losses(full.train.out_dir)
    # as if killed after the step-4 checkpoint, whose weights were then damaged in place (same size)
    run = tmp_path / "b" / "run"
    shutil.copytree(full.train.out_dir, run, ignore=shutil.ignore_patterns("step_00000006", "final", "curves.png"))
    rows = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("".join(r + "\n" for r in rows if json.loads(r)["step"] <= 4))
    with open(run / "checkpoints" / "step_00000004" / "model.safetensors", "r+b") as f:
        f.write(b"\xff" * 16)
    with pytest.warns(UserWarning, match="step_00000004 cannot be loaded.*model.safetensors"):
        trainer = Trainer(load_config(run / "config.yaml"), resume=run)
    assert trainer.state.step == 2
    trainer.fit()
    assert _losses(run) == reference  # steps 3 and 4 again, bit for bit, then 5 and 6


def test_metrics_rows_are_strict_json_and_readers_skip_what_is_not(tmp_path, scenes):
    from mmgen.training.logs import RunLogger, read_metrics

    cfg = _cfg(tmp_path, scenes)
    tmp_path.joinpath("run").mkdir()
    logger = RunLogger(tmp_path / "run", cfg, enabled=True)
    logger.log({"step": 1, "loss": float("nan"), "lr": float("inf"), "eval": {"CIDEr": float("-inf"), "n": 2}})
    logger.log({"step": 2, "loss": 1.5})
    path = tmp_path / "run" / "metrics.jsonl"
    assert [json.loads(line, parse_constant=_strict) for line in path.read_text().splitlines()] == [
        {"step": 1, "loss": None, "lr": None, "eval": {"CIDEr": None, "n": 2}},
        {"step": 2, "loss": 1.5},
    ]
    path.write_text(path.read_text() + "garbage\n" + '{"step": 4, "loss": 1.0}\n' + '{"step": 5, "lo')
    with pytest.warns(UserWarning) as caught:
        rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 4]
    messages = sorted(str(w.message) for w in caught)
    assert "skipped 1 line(s) that are not JSON objects: [3]" in messages[0] and "torn last line (line 5" in messages[1]


def test_synthetic_scenes_without_validation_images_train_without_validation(tmp_path):
    overrides = [o for o in TINY if o != "data.synth=null"]
    synth = "data.synth={n_train: 16, n_val: 0, image_size: 32}"
    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml", [*overrides, synth, "train.batch_size=8", "train.max_steps=2",
                      f"train.out_dir={tmp_path / 'run'}"])  # fmt: skip
    trainer = Trainer(cfg)
    assert trainer.data.val_records is None and not (tmp_path / "run" / "data" / "captions_val.json").exists()
    assert trainer.fit() == {} and (tmp_path / "run" / "final" / "model.safetensors").exists()
