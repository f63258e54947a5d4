"""data.captions_per_image: K references per image and step, sharing one pass over the image prefix."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from test_training import _cfg

from mmgen.config import ConfigError, load_config
from mmgen.data.collate import CaptionCollator
from mmgen.data.datasets import CaptionTrainDataset
from mmgen.data.records import Record
from mmgen.scenes.writer import make_scenes
from mmgen.training.run_data import batch_inputs
from mmgen.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes_k")
    make_scenes(out, 64, seed=1, image_size=32)
    return out / "captions_train.json"


def _pixels(_image) -> torch.Tensor:
    return torch.zeros(3, 4, 4)


def test_each_item_draws_k_references_without_replacement_and_deterministically():
    records = [Record(image=f"{i}.png", captions=[f"c{i}_{j}" for j in range(5)], image_id=i) for i in range(20)]
    records.append(Record(image="few.png", captions=["only", "two"], image_id="few"))
    ds = CaptionTrainDataset(records, _pixels, "random", seed=3, captions_per_image=3, max_pixels=None)
    ds._pixels = lambda rec, seed=None: _pixels(rec.image)  # no files: the draw is what is tested
    for index in range(len(ds)):
        item = ds[(0, index)]
        rec = records[index]
        caps = item["captions"]
        assert len(caps) == 3 and set(caps) <= set(rec.captions)
        if len(rec.captions) >= 3:
            assert len(set(caps)) == 3  # without replacement
        else:
            assert set(caps) == set(rec.captions)  # cycles: every reference once before a repeat
        assert ds[(0, index)]["captions"] == caps  # a function of (seed, epoch, index)
    draws = [tuple(ds[(e, 0)]["captions"]) for e in range(30)]
    assert len(set(draws)) > 10  # a new draw every epoch
    batch = CaptionCollator(_Tok())([ds[(0, 0)], ds[(0, 1)]])
    assert batch["input_ids"].shape[0] == 6 and batch["image_ids"] == [0, 1] and batch["pixel_values"].shape[0] == 2
    with pytest.raises(ValueError, match="captions_per_image"):
        CaptionTrainDataset(records, _pixels, "all", captions_per_image=2)


class _Tok:
    """The smallest tokenizer the collator needs: one id per character."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[3 + ord(ch) % 50 for ch in t] for t in texts]}

    def convert_tokens_to_ids(self, token):
        return 1


def test_a_training_step_equals_the_loss_of_each_pair_with_its_own_image(tmp_path, scenes):
    cfg = _cfg(tmp_path, scenes, "data.captions_per_image=3", "train.batch_size=8", "train.max_steps=4")
    trainer = Trainer(cfg)
    (batch,) = next(iter(trainer.batches.epoch(0, 0)))
    b = len(batch["image_ids"])
    assert b == 8 and batch["input_ids"].shape[0] == 24
    refs = {r.image_id: set(r.captions) for r in trainer.data.train_records}
    for i, image_id in enumerate(batch["image_ids"]):
        mine = batch["captions"][3 * i : 3 * i + 3]
        assert len(set(mine)) == 3 and set(mine) <= refs[image_id]  # three different references of that image
    inputs = batch_inputs(batch, trainer.device)
    trainer.model.eval()  # no dropout: one network for both computations
    with torch.no_grad():
        shared = trainer.model(**inputs).loss
        pixels = inputs["pixel_values"].repeat_interleave(3, dim=0)  # each pair with its own copy of the image
        separate = trainer.model(pixel_values=pixels, input_ids=inputs["input_ids"], labels=inputs["labels"]).loss
    torch.testing.assert_close(shared, separate, rtol=1e-5, atol=1e-6)
    trainer.model.train()
    trainer.fit()
    rows = [json.loads(line) for line in (Path(cfg.train.out_dir) / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 4 and all(x == x for x in losses)


def test_frozen_encoder_features_carry_k_references(tmp_path, scenes):
    cfg = _cfg(
        tmp_path, scenes, "data.captions_per_image=2", "train.batch_size=8", "train.max_steps=2",
        "model.encoder.freeze=all", "train.feature_cache=true",
    )  # fmt: skip
    trainer = Trainer(cfg)
    (batch,) = next(iter(trainer.batches.epoch(0, 0)))
    assert batch["features"].shape[0] == 8 and batch["input_ids"].shape[0] == 16
    assert Counter(len(set(batch["captions"][2 * i : 2 * i + 2])) for i in range(8)) == Counter({2: 8})
    trainer.fit()


def test_config_refuses_k_where_it_would_be_ignored():
    with pytest.raises(ConfigError, match="data.captions_per_image"):
        load_config(ROOT / "configs" / "tiny_cpu.yaml", ["data.captions_per_image=2", "data.caption_sampling=all"])
    with pytest.raises(ConfigError, match="data.captions_per_image"):
        load_config(ROOT / "configs" / "tiny_cpu.yaml", ["data.captions_per_image=2", "train.objective=scst"])
    with pytest.raises(ConfigError, match="data.captions_per_image"):
        load_config(ROOT / "configs" / "tiny_cpu.yaml", ["data.captions_per_image=0"])
