"""Feature cache: training from cached features equals training through the frozen encoder, the dataset
indexes like CaptionTrainDataset, invalidation, memory-mapped reads in DataLoader workers, bad images,
interrupted builds, the config-driven builder."""

from __future__ import annotations

import copy
import dataclasses
import json
import multiprocessing
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from mmgen.commands.data_command import build_feature_cache_cli
from mmgen.config import Config, DataConfig, EvalConfig, load_config
from mmgen.data.collate import CaptionCollator
from mmgen.data.datasets import CaptionTrainDataset, EpochSampler, make_loader
from mmgen.data.features import INDEX_NAME, FeatureCache, ensure_feature_cache
from mmgen.data.images import TooManyBadImagesError
from mmgen.data.records import Record
from mmgen.data.transforms import build_transform
from mmgen.distributed import DistState
from mmgen.models import CaptionModel, tiny_model_config
from mmgen.tokenizer import train_caption_tokenizer

WORDS = ["red", "blue", "green", "circle", "square", "star", "small", "large"]
SINGLE = DistState()


def _model_config(image_size: int = 32):
    return tiny_model_config(image_size=image_size, encoder_freeze="all")  # 8 px patches: 16 tokens at 32 px


def _config(max_bad_fraction: float = 0.5) -> Config:
    return Config(
        model=_model_config(),
        data=DataConfig(num_workers=0, max_bad_fraction=max_bad_fraction),
        eval=EvalConfig(batch_size=4),
    )


def _model(tokenizer, seed: int = 0) -> CaptionModel:
    torch.manual_seed(seed)
    return CaptionModel(_model_config(), tokenizer)


def _write_images(root, n: int, seed: int = 0) -> list[Record]:
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(20 + i, 24, 3), dtype=np.uint8)).save(path)
        caps = [" ".join(rng.choice(WORDS, size=4)) + f" {j}" for j in range(1 + i % 3)]
        recs.append(Record(str(path), caps, image_id=f"id{i}"))
    return recs


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[Record]:
    recs = _write_images(tmp_path_factory.mktemp("imgs"), 6)
    recs.insert(2, Record(recs[0].image, [], image_id="no-captions"))  # left out of training, as by CaptionTrainDataset
    return recs


@pytest.fixture(scope="module")
def tokenizer(records):
    return train_caption_tokenizer([c for r in records for c in r.captions] + WORDS, "wordlevel", 100)


def _reference_rows(cache: FeatureCache) -> dict[int, torch.Tensor]:
    """Record index -> features, read with the safetensors library (an independent reader)."""
    rows = {}
    for shard in cache.index["shards"]:
        with safe_open(str(cache.path / shard["file"]), framework="pt") as f:
            feats, idx = f.get_tensor("features"), f.get_tensor("indices")
        rows.update({int(i): feats[k] for k, i in enumerate(idx)})
    return rows


def _keys(size: int, seed: int, epochs) -> list[tuple[int, int]]:
    sampler = EpochSampler(size, seed=seed)
    keys = []
    for e in epochs:
        sampler.set_epoch(e)
        keys += list(sampler)
    return keys


def _inputs(batch: dict, key: str) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "labels", key)}


def test_training_from_cached_features_matches_the_frozen_encoder(tmp_path, records, tokenizer):
    cfg = _config()
    model = _model(tokenizer)
    cache = ensure_feature_cache(model, records, tmp_path / "features", cfg, SINGLE, shard_bytes=3 * 16 * 64 * 4)
    assert cache.built and cache.dtype == torch.float32 and cache.row_shape == (16, 64)
    assert len(cache.index["shards"]) == 3  # 7 images, 3 per shard

    pixel_ds = CaptionTrainDataset(records, build_transform(model.data_config, train=True), seed=3)
    feature_ds = cache.train_dataset(records, "random", seed=3)
    pixel_collate, feature_collate = CaptionCollator(tokenizer), cache.collator(tokenizer)
    keys = _keys(len(pixel_ds), seed=3, epochs=(0, 1))
    groups = [keys[s : s + 3] for s in (0, 3, 6)]
    batches = [(pixel_collate([pixel_ds[k] for k in g]), feature_collate([feature_ds[k] for k in g])) for g in groups]

    model.eval()
    for pix, feat in batches:
        assert pix["captions"] == feat["captions"] and torch.equal(pix["input_ids"], feat["input_ids"])
        loss_pix = model(**_inputs(pix, "pixel_values")).loss
        loss_feat = model(**_inputs(feat, "features")).loss
        assert abs(loss_pix.item() - loss_feat.item()) < 1e-6

    a, b = model, copy.deepcopy(model)  # identical initial weights
    start = copy.deepcopy(b.projector.state_dict())
    opts = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3) for m in (a, b)]
    for step, (pix, feat) in enumerate(batches):
        losses = []
        for m, opt, batch, key in ((a, opts[0], pix, "pixel_values"), (b, opts[1], feat, "features")):
            m.train()
            torch.manual_seed(step)  # same dropout masks in both models
            loss = m(**_inputs(batch, key)).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        assert abs(losses[0] - losses[1]) < 1e-5
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-5, rtol=0), name
    assert not torch.equal(start["fc1.weight"], b.projector.state_dict()["fc1.weight"])  # training happened


@pytest.mark.parametrize("sampling", ["random", "all"])
def test_dataset_indexing_equals_caption_train_dataset(tmp_path, records, tokenizer, sampling):
    cache = ensure_feature_cache(_model(tokenizer), records, tmp_path / "f", _config(), SINGLE)
    reference = _reference_rows(cache)
    pixel_ds = CaptionTrainDataset(records, build_transform(cache.index["inputs"]["data_config"]), sampling, seed=7)
    feature_ds = cache.train_dataset(records, sampling, seed=7)
    assert len(feature_ds) == len(pixel_ds) == (6 if sampling == "random" else 12)
    for epoch, index in [(e, i) for e in range(4) for i in range(len(pixel_ds))]:
        want, got = pixel_ds[(epoch, index)], feature_ds[(epoch, index)]
        assert (got["caption"], got["image_id"]) == (want["caption"], want["image_id"])
        r, _ = pixel_ds.locate(index, epoch)
        assert torch.equal(got["features"], reference[r])
    feature_ds.set_epoch(2)
    assert [feature_ds[i]["caption"] for i in range(len(feature_ds))] == [
        pixel_ds[(2, i)]["caption"] for i in range(len(pixel_ds))
    ]


def test_cache_is_reused_and_invalidated(tmp_path, records, tokenizer):
    cfg, out = _config(), tmp_path / "f"
    model = _model(tokenizer)

    def ensure(m=model, recs=records) -> bool:
        return ensure_feature_cache(m, recs, out, cfg, SINGLE).built

    assert ensure()
    stamp = (out / INDEX_NAME).stat().st_mtime_ns
    assert not ensure() and (out / INDEX_NAME).stat().st_mtime_ns == stamp  # unchanged: reused
    with torch.no_grad():
        model.encoder.model.blocks[0].mlp.fc1.weight.add_(1e-3)
    assert ensure() and not ensure()  # encoder weights
    timm_model = model.encoder.model
    timm_model.pretrained_cfg = {**timm_model.pretrained_cfg, "interpolation": "bilinear"}
    assert ensure() and not ensure()  # preprocessing
    assert ensure(recs=records[:-1]) and not ensure(recs=records[:-1])  # one record fewer
    moved = [*records[:-1], dataclasses.replace(records[-1], image=records[0].image)]
    assert ensure(recs=moved) and not ensure(recs=moved)  # same count, another image

    torch.manual_seed(0)
    resized = CaptionModel(_model_config(image_size=48), tokenizer)
    assert ensure(resized) and not ensure(resized)  # image size
    assert FeatureCache(out).row_shape == (36, 64)
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # no temporary directories left

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a feature cache"):
        ensure_feature_cache(model, records, tmp_path / "other", cfg, SINGLE)
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"


def test_dataloader_workers_and_bad_images(tmp_path, records, tokenizer, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    recs = [*records[:3], Record(str(bad), ["a broken image"], image_id="broken"), *records[3:]]
    cache = ensure_feature_cache(_model(tokenizer), recs, tmp_path / "f", _config(), SINGLE, dtype="bfloat16")
    printed = capsys.readouterr().out
    assert "broken.png" in printed and "1 of 8 images could not be decoded" in printed
    assert [(f["index"], f["image_id"]) for f in cache.failed] == [(3, "broken")]
    on_disk = json.loads((cache.path / INDEX_NAME).read_text())["failed"]
    assert on_disk[0]["source"] == str(bad) and on_disk[0]["reason"]
    assert cache.dtype == torch.bfloat16 and not cache.available[3]
    with pytest.raises(KeyError):
        cache.features(3)

    ds = cache.train_dataset(recs, "all", seed=1)
    assert len(ds) == 12  # the broken image's caption is left out
    reference = _reference_rows(cache)
    assert cache.features(0).dtype == torch.bfloat16  # shards mapped in this process before the workers start
    assert all(isinstance(a, np.memmap) for a in cache._maps)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.cache._maps is None and torch.equal(clone[(0, 5)]["features"], ds[(0, 5)]["features"])

    sampler = EpochSampler(len(ds), seed=1)
    loader = make_loader(ds, 4, cache.collator(tokenizer), sampler=sampler, num_workers=2, seed=1)
    seen = []
    for batch in loader:
        assert batch["features"].shape[1:] == (16, 64) and batch["features"].dtype == torch.bfloat16
        for row, image_id in zip(batch["features"], batch["image_ids"]):
            r = next(i for i, rec in enumerate(recs) if rec.image_id == image_id)
            assert torch.equal(row, reference[r])
        seen += batch["image_ids"]
    assert "broken" not in seen and len(seen) == 12
    assert sorted(seen) == sorted(rec.image_id for rec in recs if rec.image_id != "broken" for _ in rec.captions)

    with pytest.raises(TooManyBadImagesError, match="broken.png"):
        ensure_feature_cache(_model(tokenizer), recs, tmp_path / "f", _config(max_bad_fraction=0.01), SINGLE)


class _Boom(RuntimeError):
    pass


def _fail_on_second_batch(model: CaptionModel, action) -> None:
    forward, calls = model.encoder.forward, []

    def wrapped(pixels):
        if calls:
            action()
        calls.append(1)
        return forward(pixels)

    model.encoder.forward = wrapped


def _raise() -> None:
    raise _Boom("interrupted")


def test_failed_build_leaves_no_index(tmp_path, records, tokenizer):
    cfg, out = _config(), tmp_path / "f"
    model = _model(tokenizer)
    _fail_on_second_batch(model, _raise)
    with pytest.raises(_Boom):
        ensure_feature_cache(model, records, out, cfg, SINGLE, batch_size=2, shard_bytes=1)
    assert list(tmp_path.iterdir()) == []  # neither an index nor a half-written directory

    assert ensure_feature_cache(_model(tokenizer), records, out, cfg, SINGLE).built
    stale = _model(tokenizer, seed=1)
    _fail_on_second_batch(stale, _raise)
    with pytest.raises(_Boom):
        ensure_feature_cache(stale, records, out, cfg, SINGLE, batch_size=2)
    assert not ensure_feature_cache(_model(tokenizer), records, out, cfg, SINGLE).built  # the old cache is intact


def _build_then_die(model, records, out) -> None:
    torch.set_num_threads(1)
    _fail_on_second_batch(model, lambda: os._exit(3))
    ensure_feature_cache(model, records, out, _config(), SINGLE, batch_size=2, shard_bytes=1)


def test_killed_build_leaves_no_index(tmp_path, records, tokenizer):
    out = tmp_path / "f"
    model = _model(tokenizer)
    proc = multiprocessing.get_context("fork").Process(target=_build_then_die, args=(model, records, out))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 3
    (leftover,) = tmp_path.iterdir()  # the killed build's temporary directory: a shard, no index
    assert leftover.name.startswith(".f.tmp-")
    assert sorted(p.name for p in leftover.iterdir()) == ["features-00000.safetensors", "features-00001.safetensors"]
    assert not out.exists()
    assert ensure_feature_cache(model, records, out, _config(), SINGLE).built
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # the dead build's leftovers are removed


def test_config_builder_matches_the_training_run(tmp_path, records, tokenizer):
    rows = [{"image": r.image, "captions": r.captions, "image_id": r.image_id} for r in records]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    cfg = _config()
    cfg.data.train, cfg.train.out_dir, cfg.train.seed = str(tmp_path / "train.jsonl"), str(tmp_path / "run"), 5
    cfg.save(tmp_path / "config.yaml")
    placeholder = f"data.val={tmp_path / 'dataset_coco.json'}"  # as a preset names it: absent, and never read
    cache = build_feature_cache_cli(tmp_path / "config.yaml", ["data.max_bad_fraction=0.2", placeholder])
    assert cache.built and cache.path == tmp_path / "run" / "features"

    from mmgen.training.run_data import prepare

    loaded = load_config(tmp_path / "config.yaml")
    run_records = prepare(loaded, tmp_path / "run", SINGLE).train_records
    model = _model(tokenizer, seed=loaded.train.seed)  # as the trainer builds it
    assert not ensure_feature_cache(model, run_records, cache.path, loaded, SINGLE).built
