"""Training checkpoints: exact resume, a kill mid-write, pruning, best/, no pickles, per-rank RNG under DDP."""

import functools
import json
import math
import os
import pickle
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmgen.models import CaptionModel, tiny_model_config
from mmgen.tokenizer import train_caption_tokenizer
from mmgen.training import checkpoint as ck
from mmgen.training.checkpoint import latest_checkpoint, load_checkpoint, save_best, save_checkpoint
from mmgen.training.schedule import param_groups

CAPTIONS = [
    "a red circle to the left of a blue square",
    "a small green triangle on a striped background",
    "two yellow stars above a purple circle",
    "a photo of a big orange square",
]
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


@pytest.fixture(scope="module")
def tokenizer():
    return train_caption_tokenizer(CAPTIONS, "wordlevel", 200)


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _batches(tok) -> list[tuple[torch.Tensor, ...]]:
    """Two fixed batches of (pixels, ids, mask, labels) drawn from their own generator, not the global RNG."""
    g = torch.Generator().manual_seed(1234)
    seqs = [[tok.bos_token_id] + tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in CAPTIONS]
    out = []
    for part in (seqs[:2], seqs[2:]):
        t = max(map(len, part))
        ids = torch.full((2, t), tok.pad_token_id)
        mask = torch.zeros(2, t, dtype=torch.long)
        labels = torch.full((2, t), -100)
        for i, s in enumerate(part):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
            labels[i, 1 : len(s)] = torch.tensor(s[1:])
        out.append((torch.randn(2, 3, 32, 32, generator=g), ids, mask, labels))
    return out


def _lr(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))


def _build(tok, seed: int):
    _seed(seed)
    model = CaptionModel(tiny_model_config(), tok).train()  # GPT-2 dropout 0.1 is active
    opt = torch.optim.AdamW(param_groups(model, 3e-3, 0.01), fused=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(_lr, warmup=2, total=6))
    return model, opt, sched


def _train(model, opt, sched, batches, steps: int) -> list[float]:
    """Steps that draw on python, numpy and torch RNGs, as a real loop does (shuffling, augmentation, dropout)."""
    losses = []
    for _ in range(steps):
        pixels, ids, mask, labels = batches[random.randrange(len(batches))]
        noise = torch.randn_like(pixels) * float(np.random.uniform(0.05, 0.2))
        loss = model(pixels + noise, ids, mask, labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def _forbid_unpickling(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load tried to unpickle")

    for owner, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(owner, name, refuse)


def test_resume_is_bit_exact(tokenizer, tmp_path, monkeypatch):
    batches = _batches(tokenizer)
    ref_model, ref_opt, ref_sched = _build(tokenizer, 0)
    reference = _train(ref_model, ref_opt, ref_sched, batches, 6)

    model, opt, sched = _build(tokenizer, 0)
    first = _train(model, opt, sched, batches, 3)
    state = {
        "step": 3,
        "epoch": 0,
        "position": (1, 3),
        "best": None,
        "history": [{"step": 2, "loss": first[1]}],
        "ema_loss": torch.tensor([first[-1]]),
        "per_rank": {0: 3},
    }
    path = save_checkpoint(tmp_path, 3, model, opt, sched, state)
    assert path == tmp_path / "checkpoints" / "step_00000003" and latest_checkpoint(tmp_path) == path

    # a fresh run: other initial weights, other RNG streams, a new optimizer and schedule
    model2, opt2, sched2 = _build(tokenizer, 99)
    assert not torch.equal(model2.decoder.lm_head.weight, model.decoder.lm_head.weight)
    _forbid_unpickling(monkeypatch)
    loaded = load_checkpoint(path, model2, opt2, sched2)
    monkeypatch.undo()
    rest = _train(model2, opt2, sched2, batches, 3)

    assert first + rest == reference  # exact float equality, step by step
    ref_sd, sd = ref_model.state_dict(), model2.state_dict()
    assert ref_sd.keys() == sd.keys() and all(torch.equal(ref_sd[k], sd[k]) for k in ref_sd)
    assert sched2.state_dict() == ref_sched.state_dict()
    assert torch.equal(loaded.pop("ema_loss"), state.pop("ema_loss"))
    assert loaded == state  # tuples, None and integer keys come back as they went in


def _assert_no_pickles(root) -> None:
    for _, _, files in os.walk(root):
        assert not [f for f in files if os.path.splitext(f)[1] in PICKLE_SUFFIXES]


def test_pruning_best_and_replacing_a_step(tokenizer, tmp_path):
    model, opt, sched = _build(tokenizer, 0)
    _train(model, opt, sched, _batches(tokenizer), 1)
    best = save_best(tmp_path, model, {"step": 1, "CIDEr": np.float64(0.5)})
    best_files = {p.relative_to(best): p.read_bytes() for p in best.rglob("*") if p.is_file()}
    for step in range(1, 5):
        save_checkpoint(tmp_path, step, model, opt, sched, {"step": step}, keep_last=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000003", "step_00000004"]
    assert {p.relative_to(best): p.read_bytes() for p in best.rglob("*") if p.is_file()} == best_files
    assert load_checkpoint(best, CaptionModel(tiny_model_config(), tokenizer)) == {}
    assert json.loads((best / "metrics.json").read_text()) == {"step": 1, "CIDEr": 0.5}
    _assert_no_pickles(tmp_path)
    assert {p.name for p in (tmp_path / "checkpoints" / "step_00000004").iterdir()} == {
        "config.json",
        "decoder_config.json",
        "model.safetensors",
        "tokenizer",
        "training_state.safetensors",
        "training_state.json",
        "complete.json",
        "README.md",  # the model card
    }

    # saving a step again replaces it whole
    with torch.no_grad():
        model.decoder.lm_head.weight.add_(1.0)
    path = save_checkpoint(tmp_path, 4, model, opt, sched, {"step": 4, "again": True}, keep_last=2)
    fresh = CaptionModel(tiny_model_config(), tokenizer)
    assert load_checkpoint(path, fresh, restore_rng=False) == {"step": 4, "again": True}
    assert torch.equal(fresh.decoder.lm_head.weight, model.decoder.lm_head.weight)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")] == []


def _small_net() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))


def test_death_between_the_two_renames_is_repaired(tmp_path, monkeypatch):
    net = torch.nn.DataParallel(_small_net())  # a wrapper (CPU: no replicas): saved under the plain module's keys
    save_checkpoint(tmp_path, 1, net, None, None, {"step": 1})
    save_checkpoint(tmp_path, 2, net, None, None, {"step": 2})
    real_replace, calls = os.replace, []

    def dies_on_second_rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old step_2 is aside, the new one not yet in place
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", dies_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, net, None, None, {"step": 2, "new": True})
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path).name == "step_00000001"  # the last complete one still loads
    save_checkpoint(tmp_path, 3, net, None, None, {"step": 3}, keep_last=0)  # puts the old step_2 back
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_00000001", "step_00000002", "step_00000003"]
    assert load_checkpoint(tmp_path / "checkpoints" / "step_00000002", _small_net()) == {"step": 2}


KILLED_WRITER = """
import sys, time, torch
from safetensors.torch import save_file
from mmgen.training import checkpoint as ck
run, ready = sys.argv[1:3]
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
opt = torch.optim.AdamW(net.parameters(), fused=False)
net(torch.randn(3, 4)).sum().backward()
opt.step()
ck.save_checkpoint(run, 1, net, opt, None, {"step": 1})
save_file(net.state_dict(), run + "/reference.safetensors")  # for the test to compare against

def stalls_mid_write(path, *args, **kwargs):
    real(path, *args, **kwargs)  # model files and optimizer tensors are on disk, the json is not
    open(ready, "w").close()
    time.sleep(120)

real = ck.save_file
ck.save_file = stalls_mid_write
opt.step()
ck.save_checkpoint(run, 2, net, opt, None, {"step": 2})
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_kill_during_a_write_leaves_the_previous_checkpoint(tmp_path):
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path), str(ready)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the writer never reached the pause"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    root = tmp_path / "checkpoints"
    assert [p.name for p in root.iterdir() if p.name.startswith(".tmp-step_00000002-")]
    assert not (root / "step_00000002").exists()

    latest = latest_checkpoint(tmp_path)
    assert latest == root / "step_00000001"
    net = _small_net()
    opt = torch.optim.AdamW(net.parameters(), fused=False)
    assert load_checkpoint(latest, net, opt) == {"step": 1}
    reference = load_file(tmp_path / "reference.safetensors")
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in reference.items())
    assert len(opt.state) == 4

    save_checkpoint(tmp_path, 2, net, opt, None, {"step": 2})
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001", "step_00000002"]


DDP_RANK = """
import random, sys
import numpy as np, torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from mmgen.training import checkpoint as ck

run, port, rank = sys.argv[1], sys.argv[2], int(sys.argv[3])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
net = lambda: DDP(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2)))
torch.manual_seed(0)
model = net()
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
torch.manual_seed(100 + rank); random.seed(rank); np.random.seed(rank)  # each rank its own stream
model(torch.randn(3, 4)).sum().backward()
opt.step()
states = ck.gather_rng_states()  # every rank
if rank == 0:
    ck.save_checkpoint(run, 1, model, opt, None, {"step": 1}, rng_states=states)
dist.barrier()
expected = (torch.rand(5), random.random(), np.random.rand())
torch.manual_seed(7); random.seed(7); np.random.seed(7)
fresh = net()
fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
assert ck.load_checkpoint(ck.latest_checkpoint(run), fresh, fresh_opt) == {"step": 1}
got = (torch.rand(5), random.random(), np.random.rand())
assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:], rank
assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))
assert fresh_opt.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
dist.destroy_process_group()
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed")
def test_ddp_every_rank_resumes_its_own_rng(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DDP_RANK, str(tmp_path), str(port), str(rank)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in range(2)
    ]
    outputs = [p.communicate(timeout=180)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outputs)
    assert latest_checkpoint(tmp_path).name == "step_00000001"


def test_state_codec_round_trips_the_types_resume_needs(tmp_path):
    from safetensors.torch import save_file

    from mmgen.training.state_codec import decode_tree, encode_tree, unshare

    base = torch.arange(6.0)
    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": base[:3]}, 1: {"exp_avg": base[3:]}},  # int keys, views
        "numpy": ("MT19937", np.arange(4, dtype=np.uint32), 2, 0, 0.5),
        "__tensor__": "a key that looks like a marker",
        "nested": [None, True, 1.5, "x"],
    }
    tensors: dict = {}
    tree = encode_tree(state, "s", tensors)
    json.dumps(tree)  # JSON all the way down
    save_file(unshare(tensors), str(tmp_path / "t.safetensors"))  # views of one buffer are copied, not refused
    back = decode_tree(json.loads(json.dumps(tree)), load_file(str(tmp_path / "t.safetensors")))
    assert set(back["state"]) == {0, 1} and torch.equal(back["state"][1]["exp_avg"], base[3:])
    assert torch.equal(back["state"][0]["step"], torch.tensor(3.0))
    assert isinstance(back["numpy"], tuple) and back["numpy"][1].dtype == np.uint32
    assert np.array_equal(back["numpy"][1], np.arange(4)) and back["numpy"][2:] == (2, 0, 0.5)
    assert back["__tensor__"] == state["__tensor__"] and back["nested"] == state["nested"]
    with pytest.raises(TypeError, match="s.bad: a object cannot be stored"):
        encode_tree({"bad": object()}, "s", {})


def _overwrite_head(file, data: bytes) -> None:
    """Damage a file in place, keeping its size (the size check of the marker cannot see it)."""
    with open(file, "r+b") as f:
        f.write(data)


def _three_checkpoints(tokenizer, tmp_path):
    """Checkpoints at steps 1, 2, 3 of one model; returns the weights saved at each step."""
    model, opt, sched = _build(tokenizer, 0)
    batches, weights = _batches(tokenizer), {}
    for step in (1, 2, 3):
        _train(model, opt, sched, batches, 1)
        save_checkpoint(tmp_path, step, model, opt, sched, {"step": step}, keep_last=3)
        weights[step] = {k: v.clone() for k, v in model.state_dict().items()}
    return weights


DAMAGE = {  # name -> (the file damaged, how)
    "truncated weights": ("model.safetensors", lambda f: f.write_bytes(f.read_bytes()[:100])),
    "garbage weights": ("model.safetensors", lambda f: _overwrite_head(f, b"\xff" * 16)),
    "garbage training state": ("training_state.json", lambda f: _overwrite_head(f, b"#" * 8)),
    "garbage optimizer tensors": ("training_state.safetensors", lambda f: _overwrite_head(f, b"\x00" * 8)),
    "broken marker": ("complete.json", lambda f: f.write_text("{")),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tokenizer, tmp_path, case):
    weights = _three_checkpoints(tokenizer, tmp_path)
    name, damage = DAMAGE[case]
    bad = tmp_path / "checkpoints" / "step_00000003"
    damage(bad / name)
    with pytest.raises(ck.CheckpointError, match=str(bad)):  # one checkpoint alone: a clear error naming the file
        load_checkpoint(bad, CaptionModel(tiny_model_config(), tokenizer))

    model, opt, sched = _build(tokenizer, 7)
    with pytest.warns(UserWarning) as caught:
        found = ck.load_latest_checkpoint(tmp_path, model, opt, sched)
    messages = [str(w.message) for w in caught]
    assert any(m.startswith(f"{bad} cannot be loaded") and name in m for m in messages), messages
    assert any(m.startswith(f"resuming from {found[0]}") for m in messages), messages
    assert found is not None and found[0].name == "step_00000002" and found[1] == {"step": 2}
    assert all(torch.equal(v, weights[2][k]) for k, v in model.state_dict().items())
    assert sched.last_epoch == 2


def test_no_loadable_checkpoint_is_an_error_naming_each(tokenizer, tmp_path):
    _three_checkpoints(tokenizer, tmp_path)
    for step in (1, 2, 3):
        (tmp_path / "checkpoints" / f"step_0000000{step}" / "model.safetensors").write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(ck.CheckpointError) as caught:
        ck.load_latest_checkpoint(tmp_path, CaptionModel(tiny_model_config(), tokenizer))
    assert all(f"step_0000000{step}" in str(caught.value) for step in (1, 2, 3))
    assert ck.load_latest_checkpoint(tmp_path / "elsewhere", CaptionModel(tiny_model_config(), tokenizer)) is None


def test_non_finite_weights_are_never_saved(tokenizer, tmp_path):
    model, opt, sched = _build(tokenizer, 0)
    save_checkpoint(tmp_path, 1, model, opt, sched, {"step": 1})
    save_best(tmp_path, model, {"step": 1, "loss": 2.0})
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    name, weight = next(iter(model.projector.named_parameters()))
    with torch.no_grad():
        weight.view(-1)[0] = float("nan")
        model.decoder.lm_head.weight[1, 2] = float("inf")
    with pytest.raises(ck.NonFiniteWeightsError, match=r"step_00000002: 2 weight tensor\(s\) hold NaN") as caught:
        save_checkpoint(tmp_path, 2, model, opt, sched, {"step": 2})
    assert f"projector.{name}" in str(caught.value) and "train.lr" in str(caught.value)
    with pytest.raises(ck.NonFiniteWeightsError, match="best"):
        save_best(tmp_path, model, {"step": 2, "loss": 1.0})
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written, not even a work directory


def test_best_metrics_and_the_training_state_are_strict_json(tokenizer, tmp_path):
    model, opt, sched = _build(tokenizer, 0)
    best = save_best(tmp_path, model, {"step": 1, "loss": float("nan"), "CIDEr": torch.tensor(float("inf"))})
    assert json.loads((best / "metrics.json").read_text(), parse_constant=_no_constant) == {
        "step": 1,
        "loss": None,
        "CIDEr": None,
    }
    path = save_checkpoint(tmp_path, 1, model, opt, sched, {"step": 1, "ema": torch.tensor([0.5]), "epoch": 2})
    state = ck.read_training_state(path)  # without loading the model
    assert state["step"] == 1 and state["epoch"] == 2 and torch.equal(state["ema"], torch.tensor([0.5]))


def _no_constant(name: str):
    raise AssertionError(f"not strict JSON: {name}")
