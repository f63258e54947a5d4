"""train.ema_decay: the moving average of the weights, against a float64 recursion written out here; what a
run evaluates and writes; exact resume; clear errors."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from mmgen.config import ConfigError, load_config
from mmgen.scenes.writer import make_scenes
from mmgen.training.checkpoint import latest_checkpoint, read_training_state
from mmgen.training.ema import AVERAGE_KEY, WeightAverage, build_average
from mmgen.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.encoder.img_size=32",
    "model.encoder.embed_dim=32",
    "model.encoder.depth=1",
    "model.encoder.num_heads=2",
    "model.decoder.config_overrides={n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64, resid_pdrop: 0.0, "
    "embd_pdrop: 0.0, attn_pdrop: 0.0}",
    "data.synth=null",
    "data.num_workers=0",
    "eval.every=0",
    "train.log_every=1",
    "train.warmup_steps=2",
    "train.tensorboard=false",
    "train.batch_size=16",
    "train.keep_last=5",
]


def test_the_average_follows_the_warmed_up_recursion_in_float64():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    net[1].weight.requires_grad_(False)  # frozen: not averaged
    avg = WeightAverage(net, 0.9)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    assert avg.names == names and "1.weight" not in names
    expect = {n: p.detach().double().clone() for n, p in net.named_parameters() if p.requires_grad}
    for n_update in range(1, 101):
        with torch.no_grad():
            for p in net.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p))
        avg.update(net)
        d = min(0.9, (1 + n_update) / (10 + n_update))  # 0.18, 0.25, ... then 0.9 from the 80th update on
        for n, p in net.named_parameters():
            if p.requires_grad:
                expect[n] = d * expect[n] + (1 - d) * p.detach().double()
    assert avg.updates == 100 and avg.rate() == 0.9  # past the warm-up: the decay asked for
    for n, a in zip(avg.names, avg.averages):
        torch.testing.assert_close(a.double(), expect[n], rtol=1e-5, atol=1e-6)
    own = {n: p.detach().clone() for n, p in net.named_parameters()}
    with avg.applied(net):
        for n, p in net.named_parameters():
            want = expect[n] if n in expect else own[n].double()
            torch.testing.assert_close(p.detach().double(), want, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(p, own[n]) for n, p in net.named_parameters())  # its own weights back, exactly


def test_a_saved_average_loads_only_into_the_same_parameters():
    a, b = nn.Linear(2, 2), nn.Linear(2, 3)
    avg = WeightAverage(a, 0.99)
    avg.update(a)
    again = WeightAverage(a, 0.99)
    again.load_state_dict(avg.state_dict())
    assert again.updates == 1 and all(torch.equal(x, y) for x, y in zip(again.averages, avg.averages))
    other = WeightAverage(nn.Embedding(2, 2), 0.99)  # 'weight' alone
    with pytest.raises(KeyError, match="differ"):
        other.load_state_dict(avg.state_dict())
    with pytest.raises(ValueError, match="'weight' was saved as \\(2, 2\\)"):  # same names, other shapes
        WeightAverage(b, 0.99).load_state_dict(avg.state_dict())
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(a, 1.0)
    with pytest.raises(KeyError, match="the model has no parameter 'bias'"):  # applied to another model
        avg.update(nn.Linear(2, 2, bias=False))
    assert build_average(a, 0.0) is None and build_average(a, 0.9).decay == 0.9
    with pytest.raises(ValueError, match="no weight average under train.distributed=fsdp"):
        build_average(a, 0.9, sharded=True)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    make_scenes(out, 48, seed=0, image_size=32)
    return out / "captions_train.json"


def _cfg(run: Path, scenes, *extra):
    return load_config(
        ROOT / "configs" / "tiny_cpu.yaml", [*TINY, f"data.train={scenes}", f"train.out_dir={run}", *extra]
    )


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def test_a_run_writes_the_average_as_final_and_trains_exactly_as_without_it(tmp_path, scenes):
    plain = _cfg(tmp_path / "plain", scenes, "train.max_steps=6", "train.save_every=100")
    Trainer(plain).fit()
    averaged = _cfg(tmp_path / "ema", scenes, "train.max_steps=6", "train.save_every=100", "train.ema_decay=0.5")
    Trainer(averaged).fit()
    run = Path(averaged.train.out_dir)
    last = latest_checkpoint(run)
    trained = _weights(last)  # a checkpoint holds the trained weights, to go on from
    reference = _weights(Path(plain.train.out_dir) / "final")
    assert trained.keys() == reference.keys()
    assert all(torch.equal(trained[k], reference[k]) for k in trained)  # the average does not touch training
    saved = read_training_state(last)[AVERAGE_KEY]
    assert saved["updates"] == 6 and saved["decay"] == 0.5
    from mmgen.models import CaptionModel

    final = dict(CaptionModel.from_pretrained(run / "final").named_parameters())  # tied weights by one name
    names = saved["averages"]
    assert set(names) == set(final)
    assert all(torch.equal(final[k], names[k]) for k in names)  # final/ is the average
    assert sum(not torch.equal(names[k], trained[k]) for k in names if k in trained) > len(trained) // 2


def test_resuming_with_another_choice_of_average_is_refused(tmp_path, scenes):
    # the exact resume with an average: tests/test_training.py::test_resume_reproduces_the_uninterrupted_run...
    run = tmp_path / "run"
    Trainer(_cfg(run, scenes, "train.max_steps=3", "train.save_every=2", "train.ema_decay=0.8")).fit()
    saved = (run / "config.yaml").read_bytes()
    with pytest.raises(ConfigError, match="trained with a weight average and is resumed without one"):
        Trainer(_cfg(run, scenes, "train.max_steps=5", "train.save_every=2"), resume=run)
    assert (run / "config.yaml").read_bytes() == saved  # refused before anything was written
    plain = tmp_path / "plain"
    Trainer(_cfg(plain, scenes, "train.max_steps=3", "train.save_every=2")).fit()
    with pytest.raises(ConfigError, match="trained without a weight average and is resumed with one"):
        Trainer(_cfg(plain, scenes, "train.max_steps=5", "train.save_every=2", "train.ema_decay=0.8"), resume=plain)


def test_ema_decay_out_of_range_names_the_key(tmp_path):
    for bad in ("1.0", "-0.1", "yes"):
        with pytest.raises(ConfigError, match="train.ema_decay"):
            load_config(ROOT / "configs" / "tiny_cpu.yaml", [f"train.ema_decay={bad}"])
