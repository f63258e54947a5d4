"""Training/evaluation views, reproducible caption draws and augmentation, DataLoader workers, transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmgen.data.collate import CaptionCollator, EvalCollator
from mmgen.data.datasets import (
    CaptionEvalDataset,
    CaptionTrainDataset,
    ConcatRecords,
    EpochSampler,
    StreamingCaptionDataset,
    make_loader,
)
from mmgen.data.records import Record
from mmgen.data.transforms import build_transform
from mmgen.models.encoder import normalize_on_device
from mmgen.tokenizer import train_caption_tokenizer

CFG = {
    "input_size": (3, 16, 16),
    "interpolation": "bicubic",
    "mean": (0.48, 0.45, 0.40),
    "std": (0.27, 0.26, 0.28),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    recs = []
    for i in range(12):
        path = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(20 + i, 24, 3), dtype=np.uint8)).save(path)
        recs.append(Record(str(path), [f"caption {i} number {j}" for j in range(1 + i % 5)], image_id=i))
    recs.append(Record(str(root / "0.png"), [], image_id="no-captions"))  # left out of training
    return recs


@pytest.fixture(scope="module")
def tokenizer(records):
    return train_caption_tokenizer([c for r in records for c in r.captions], kind="wordlevel")


def test_random_caption_is_a_function_of_seed_epoch_index(records):
    ds = CaptionTrainDataset(records, build_transform(CFG), seed=5)
    assert len(ds) == 12
    draw = [[ds[(e, i)]["caption"] for i in range(12)] for e in range(4)]
    again = CaptionTrainDataset(records, build_transform(CFG), seed=5)
    assert draw == [[again[(e, i)]["caption"] for i in range(12)] for e in range(4)]
    assert all(draw[e][i] in records[i].captions for e in range(4) for i in range(12))
    assert draw[0] != draw[1] and draw[1] != draw[2]  # a different reference per epoch
    ds.set_epoch(2)
    assert [ds[i]["caption"] for i in range(12)] == draw[2]
    other = CaptionTrainDataset(records, build_transform(CFG), seed=6)
    assert [other[(0, i)]["caption"] for i in range(12)] != draw[0]


def test_all_pairs_and_eval_view(records):
    ds = CaptionTrainDataset(records, build_transform(CFG), caption_sampling="all")
    pairs = [(ds[i]["image_id"], ds[i]["caption"]) for i in range(len(ds))]
    assert pairs == [(r.image_id, c) for r in records for c in r.captions]
    ev = CaptionEvalDataset(records, build_transform(CFG))
    batch = EvalCollator()([ev[i] for i in range(len(ev))])
    assert batch["image_ids"][-1] == "no-captions" and batch["references"][3] == records[3].captions
    assert batch["pixel_values"].shape == (13, 3, 16, 16) and batch["failed"] == []


def test_concat_records_and_streaming_view(records):
    cat = ConcatRecords([records[:5], records[5:]])
    assert len(cat) == 13 and cat[7] is records[7] and cat[-1] is records[-1]
    stream = StreamingCaptionDataset(iter(records), build_transform(CFG), mode="all")
    assert sum(1 for _ in stream) == sum(len(r.captions) for r in records)
    one = [it["caption"] for it in StreamingCaptionDataset(records, build_transform(CFG), seed=1)]
    assert one == [it["caption"] for it in StreamingCaptionDataset(records, build_transform(CFG), seed=1)]
    # a plain iterable read by two workers: each takes every other record, none is read twice
    view = StreamingCaptionDataset(records, build_transform(CFG), mode="eval")
    loader = torch.utils.data.DataLoader(view, batch_size=4, num_workers=2, collate_fn=EvalCollator())
    assert sorted(map(str, (i for b in loader for i in b["image_ids"]))) == sorted(str(r.image_id) for r in records)


def _batches(records, tokenizer, workers, seed):
    ds = CaptionTrainDataset(records, build_transform(CFG, train=True, augment=True), seed=seed)
    sampler = EpochSampler(len(ds), seed=seed)
    loader = make_loader(
        ds, batch_size=4, collate_fn=CaptionCollator(tokenizer), sampler=sampler, num_workers=workers, seed=seed
    )
    out = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        out += list(loader)
    return out


def test_two_worker_loader_is_deterministic(records, tokenizer):
    a = _batches(records, tokenizer, workers=2, seed=3)
    b = _batches(records, tokenizer, workers=2, seed=3)
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        assert x["image_ids"] == y["image_ids"] and x["captions"] == y["captions"]
        assert torch.equal(x["pixel_values"], y["pixel_values"]) and torch.equal(x["labels"], y["labels"])
    # items depend on (seed, epoch, index) only: the same batches come out of the main process
    c = _batches(records, tokenizer, workers=0, seed=3)
    assert all(torch.equal(x["pixel_values"], z["pixel_values"]) for x, z in zip(a, c))
    d = _batches(records, tokenizer, workers=0, seed=4)
    assert [x["image_ids"] for x in a] != [x["image_ids"] for x in d]


def test_epoch_sampler_shards_and_resumes():
    s0, s1 = EpochSampler(10, seed=1, world_size=2, rank=0), EpochSampler(10, seed=1, world_size=2, rank=1)
    i0, i1 = [i for _, i in s0], [i for _, i in s1]
    assert sorted(i0 + i1) == list(range(10)) and len(s0) == 5
    s0.set_epoch(1)
    full = list(s0)
    assert {e for e, _ in full} == {1} and [i for _, i in full] != i0
    s0.set_epoch(1, start=2)
    assert list(s0) == full[2:] and len(s0) == 3
    padded = EpochSampler(5, world_size=2, shuffle=False)
    assert [i for _, i in padded] == [0, 2, 4]


def test_uint8_transform_with_device_normalisation_matches_float(records):
    im = Image.open(records[3].image).convert("RGB")
    ref = build_transform(CFG)(im)
    u8 = build_transform(CFG, uint8=True)(im)
    assert u8.dtype == torch.uint8 and u8.shape == ref.shape == (3, 16, 16)
    out = normalize_on_device(u8[None], CFG["mean"], CFG["std"])
    assert out.dtype == torch.float32 and torch.allclose(out[0], ref, atol=1e-5)


def test_augmentation_is_off_by_default_and_light(records):
    im = Image.open(records[3].image).convert("RGB")
    assert torch.equal(build_transform(CFG, train=True)(im), build_transform(CFG)(im))
    ds = CaptionTrainDataset(records, build_transform(CFG, train=True, augment=True))
    x, y = ds[(0, 3)]["pixel_values"], ds[(1, 3)]["pixel_values"]
    assert x.shape == (3, 16, 16) and not torch.equal(x, y)


@pytest.mark.parametrize("workers", [0, 2])
def test_preloaded_images_equal_decoding_every_time(records, tmp_path, workers):
    from mmgen.data.images import BadItem
    from mmgen.data.preload import preload_images

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    recs = [*records[:5], Record(str(broken), ["a broken image"], image_id="broken"), *records[5:]]
    transform = build_transform(CFG, train=True, uint8=True)
    plain = CaptionTrainDataset(recs, transform, seed=3)
    pre = CaptionTrainDataset(recs, transform, seed=3)
    pre.preloaded = preload_images(recs, transform, num_workers=workers, batch_size=4, log=None)
    assert len(pre.preloaded) == len(recs) and list(pre.preloaded.bad) == [5]
    for epoch in (0, 1):
        for i in range(len(plain)):
            a, b = plain[(epoch, i)], pre[(epoch, i)]
            if isinstance(a, BadItem):  # still counted as a bad image every epoch
                assert isinstance(b, BadItem) and b.image_id == a.image_id == "broken"
                continue
            assert a["caption"] == b["caption"] and a["image_id"] == b["image_id"]
            assert b["pixel_values"].dtype == torch.uint8 and torch.equal(a["pixel_values"], b["pixel_values"])


def test_preload_refuses_augmentation_and_streaming():
    from mmgen.config import ConfigError, DataConfig

    with pytest.raises(ConfigError, match=r"data\.preload.*data\.augment=false"):
        DataConfig(preload=True, augment=True)
    with pytest.raises(ConfigError, match=r"data\.preload.*not streaming"):
        DataConfig(preload=True, streaming=True)


def test_preload_errors_name_the_problem(records, tmp_path):
    from mmgen.data.preload import preload_images

    with pytest.raises(ValueError, match="stores uint8 images; the transform gave torch.float32"):
        preload_images(records, build_transform(CFG), log=None)  # a float transform
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    bad = [Record(str(broken), ["x"], image_id=i) for i in range(3)]
    with pytest.raises(ValueError, match="none of the 3 training images could be decoded"):
        preload_images(bad, build_transform(CFG, uint8=True), log=None)
