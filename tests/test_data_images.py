"""Safe decoding: colour modes, EXIF orientation, bad files counted in training and reported in evaluation."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmgen.data.collate import CaptionCollator, EvalCollator
from mmgen.data.datasets import CaptionEvalDataset, CaptionTrainDataset
from mmgen.data.images import BadImageError, BadImageTracker, TooManyBadImagesError, decode_image
from mmgen.data.records import Record
from mmgen.data.transforms import build_transform
from mmgen.tokenizer import train_caption_tokenizer

CFG = {
    "input_size": (3, 16, 16),
    "interpolation": "bilinear",
    "mean": (0.5,) * 3,
    "std": (0.5,) * 3,
    "crop_pct": 1.0,
    "crop_mode": "center",
}


def _noise(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """One file per bad-image case, with the phrase the reason must contain."""
    jpeg = _encode(Image.fromarray(_noise()), "JPEG")
    png = bytearray(_encode(Image.fromarray(_noise()), "PNG"))
    idat = png.find(b"IDAT")
    png[idat + 20 : idat + 60] = bytes(b ^ 0xFF for b in png[idat + 20 : idat + 60])
    files = {
        "corrupt": (png, "corrupt image data"),
        "truncated": (jpeg[: len(jpeg) // 2], "truncated"),
        "zero_byte": (b"", "empty file"),
        "non_image": (b"just some text, not pixels\n" * 4, "not an image"),
        "too_many_pixels": (_encode(Image.new("RGB", (300, 200)), "PNG"), "too many pixels"),
    }
    out = {}
    for i, (name, (data, reason)) in enumerate(files.items()):
        path = tmp / f"case{i}.img"  # a neutral name: the reason must come from the content
        path.write_bytes(bytes(data))
        out[name] = (path, reason)
    return out


@pytest.fixture(scope="module")
def tokenizer():
    return train_caption_tokenizer(["a red box", "a blue ball on grass"], kind="wordlevel")


@pytest.mark.parametrize("case", ["corrupt", "truncated", "zero_byte", "non_image", "too_many_pixels"])
def test_bad_image_is_skipped_counted_and_named(tmp_path, tokenizer, case):
    path, reason = _bad_files(tmp_path)[case]
    with pytest.raises(BadImageError, match=reason) as err:
        decode_image(path, max_pixels=50_000)
    assert str(path) in str(err.value)
    good = [tmp_path / f"good{i}.png" for i in range(3)]
    for i, g in enumerate(good):
        Image.fromarray(_noise(seed=i)).save(g)
    recs = [Record(str(g), ["a red box"], i) for i, g in enumerate(good)] + [Record(str(path), ["a blue ball"], 9)]
    ds = CaptionTrainDataset(recs, build_transform(CFG), max_pixels=50_000)
    batch = CaptionCollator(tokenizer)([ds[i] for i in range(len(ds))])
    assert batch["image_ids"] == [0, 1, 2] and batch["pixel_values"].shape == (3, 3, 16, 16)
    assert len(batch["bad"]) == 1 and batch["bad"][0][0] == str(path) and reason in batch["bad"][0][1]
    logged = []
    tracker = BadImageTracker(max_bad_fraction=0.5, log=logged.append)
    tracker.update(batch)
    summary = tracker.end_epoch(epoch=3)
    assert "skipped 1 of 4" in summary and str(path) in summary and reason in summary and logged == [summary]
    # evaluation: an explicit failed entry, never a silent drop
    ev = EvalCollator()([CaptionEvalDataset(recs, build_transform(CFG), max_pixels=50_000)[i] for i in range(4)])
    assert ev["image_ids"] == [0, 1, 2]
    assert ev["failed"][0][0] == 9 and str(path) in ev["failed"][0][1] and reason in ev["failed"][0][1]


def test_training_fails_once_bad_fraction_is_exceeded(tmp_path, tokenizer):
    bad = _bad_files(tmp_path)
    good = tmp_path / "good.png"
    Image.fromarray(_noise()).save(good)
    recs = [Record(str(good), ["a red box"], i) for i in range(6)]
    recs += [Record(str(p), ["a red box"], f"bad-{k}") for k, (p, _) in bad.items() if k != "too_many_pixels"]
    ds = CaptionTrainDataset(recs, build_transform(CFG))
    loader = torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=CaptionCollator(tokenizer))
    # 4 bad of 10 items: fine at 0.5, an error at 0.3 (raised during the epoch once the limit is passed)
    tracker = BadImageTracker(max_bad_fraction=0.5, epoch_size=len(ds), log=lambda s: None)
    for batch in loader:
        tracker.update(batch)
    assert "skipped 4 of 10" in tracker.end_epoch()
    tracker = BadImageTracker(max_bad_fraction=0.3, epoch_size=len(ds))
    with pytest.raises(TooManyBadImagesError, match="4 of 10 training items") as err:
        for batch in loader:
            tracker.update(batch)
    assert str(bad["corrupt"][0]) in str(err.value)
    # without a known epoch size the check happens at the end of the epoch
    tracker = BadImageTracker(max_bad_fraction=0.3)
    for batch in loader:
        tracker.update(batch)
    with pytest.raises(TooManyBadImagesError):
        tracker.end_epoch()


def test_all_bad_batch_has_zero_rows(tmp_path, tokenizer):
    (tmp_path / "x.png").write_bytes(b"")
    batch = CaptionCollator(tokenizer, image_size=(16, 16))(
        [None, CaptionTrainDataset([Record(str(tmp_path / "x.png"), ["a"], 1)], build_transform(CFG))[0]]
    )
    assert batch["pixel_values"].shape == (0, 3, 16, 16) and batch["input_ids"].shape[0] == 0
    assert len(batch["bad"]) == 2


def test_pixel_limit_does_not_touch_pil_global(tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    data = _encode(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(BadImageError, match="too many pixels"):
        decode_image(data, max_pixels=9_999)
    assert decode_image(data, max_pixels=10_000).size == (100, 100)
    assert Image.MAX_IMAGE_PIXELS == before


def _mode_images() -> dict[str, tuple[Image.Image, tuple[int, int, int]]]:
    """Images of every mode with the RGB colour expected at pixel (0, 0)."""
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 255))
    rgba.putpixel((1, 1), (255, 0, 0, 0))  # fully transparent: must become the white background
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 40, 80, 120] + [0] * 762)
    pa = pal.convert("PA")
    i16 = Image.fromarray(np.full((4, 4), 65535 // 2, dtype=np.uint16))  # mode I;16
    return {
        "L": (Image.new("L", (4, 4), 77), (77, 77, 77)),
        "LA": (Image.new("LA", (4, 4), (77, 255)), (77, 77, 77)),
        "P": (pal, (40, 80, 120)),
        "PA": (pa, (40, 80, 120)),
        "CMYK": (Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
        "RGBA": (rgba, (10, 20, 30)),
        "I;16": (i16, (127, 127, 127)),
        "I": (Image.fromarray(np.full((4, 4), 40000, dtype=np.int32), mode="I"), (156, 156, 156)),
        "F": (Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), mode="F"), (128, 128, 128)),
        "1": (Image.new("1", (4, 4), 1), (255, 255, 255)),
    }


@pytest.mark.parametrize("mode", ["L", "LA", "P", "PA", "CMYK", "RGBA", "I;16", "I", "F", "1"])
def test_colour_modes_become_rgb(mode):
    im, expected = _mode_images()[mode]
    assert im.mode == mode
    out = decode_image(im)
    assert out.mode == "RGB" and out.size == (4, 4)
    assert out.getpixel((0, 0)) == expected
    if mode == "RGBA":
        assert out.getpixel((1, 1)) == (255, 255, 255)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_files_decode(tmp_path, fmt):
    path = tmp_path / f"deep.{fmt.lower()}"
    Image.fromarray(np.full((5, 7), 65535, dtype=np.uint16)).save(path, format=fmt)
    out = decode_image(path)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 20, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    im.save(path, format="JPEG", exif=exif, quality=95)
    out = decode_image(path)
    assert out.size == (20, 40)  # portrait after the transpose
    top, bottom = out.getpixel((10, 5)), out.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the red half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_reduced_scale_jpeg_decoding_keeps_the_requested_size():
    data = _encode(Image.fromarray(_noise(400, 600)), "JPEG")
    assert decode_image(data).size == (600, 400)
    w, h = decode_image(data, min_size=120).size
    assert min(w, h) >= 120 and (w, h) != (600, 400)


def test_an_extreme_aspect_ratio_is_refused_from_the_header_before_any_resize(tmp_path):
    """A 100000x1 PNG is 372 bytes and 0.1 Mpx, but the encoder's resize would make it 6.4M x 64 pixels."""
    from mmgen.data.images import MAX_ASPECT_RATIO

    wide = tmp_path / "wide.png"
    Image.new("RGB", (100_000, 1)).save(wide)
    assert wide.stat().st_size < 1000
    with pytest.raises(BadImageError, match=r"wide.png: extreme aspect ratio: 100000x1 is more than 100 times") as e:
        decode_image(wide)
    assert not e.value.too_large  # not too many pixels: a server answers 422, not 413
    tall = _encode(Image.new("L", (3, 3 * MAX_ASPECT_RATIO + 1)), "PNG")
    with pytest.raises(BadImageError, match="extreme aspect ratio: 3x301"):
        decode_image(tall)
    edge = decode_image(_encode(Image.new("L", (3, 3 * MAX_ASPECT_RATIO)), "PNG"))  # at the limit: decoded
    assert edge.size == (3, 300) and edge.mode == "RGB"
    assert decode_image(wide, max_aspect=None).size == (100_000, 1)  # the check can be turned off
    with pytest.raises(BadImageError, match="too many pixels") as e:
        decode_image(_encode(Image.new("L", (300, 200)), "PNG"), max_pixels=1000)
    assert e.value.too_large


def test_what_is_not_a_regular_file_is_named_for_what_it_is(tmp_path):
    cases = {tmp_path / "gone.png": "file not found", tmp_path: "a directory, not an image file"}
    if Path("/dev/zero").exists():  # reading it would never end: never opened
        cases[Path("/dev/zero")] = r"not a regular file \(a character device\)"
    link = tmp_path / "link.png"
    link.symlink_to(tmp_path / "nowhere.png")
    cases[link] = r"file not found \(a broken symbolic link\)"
    for path, reason in cases.items():
        with pytest.raises(BadImageError, match=f"^{path}: {reason}$"):
            decode_image(path)
