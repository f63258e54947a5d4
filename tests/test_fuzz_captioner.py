"""Property tests of the Captioner's inputs (hypothesis): tensors of every shape, dtype and value, and images of every
size, aspect ratio and mode. Each is captioned (integer pixels as the same pixels in uint8) or refused with a
BadImageError naming the image; never another exception, never a caption of something that is not an image."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fuzz_settings
from hypothesis import given, note
from hypothesis import strategies as st
from PIL import Image

from mmgen.captioner import Captioner
from mmgen.data.images import BadImageError

ROOT = Path(__file__).resolve().parents[1]
FAST = {"num_beams": 1, "max_new_tokens": 3}

DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool, torch.float16, torch.bfloat16,
          torch.float32, torch.float64, torch.complex64]  # fmt: skip


@pytest.fixture(scope="module")
def captioner():
    return Captioner.from_pretrained(ROOT / "assets" / "tiny-scenes-model", device="cpu")


@st.composite
def tensors(draw) -> torch.Tensor:
    """A tensor: mostly the model's (3, 64, 64) or a batch of them, sometimes any shape; any dtype; values in
    range, far out of range, or holding NaN / infinity."""
    shape = draw(
        st.sampled_from([(3, 64, 64), (2, 3, 64, 64), (0, 3, 64, 64)])
        | st.lists(st.integers(0, 66), max_size=5).map(tuple).filter(lambda s: math.prod(s) <= 30_000)
    )
    dtype = draw(st.sampled_from(DTYPES))
    low, high = draw(st.sampled_from([(0, 255), (0, 1), (-3, 3), (-1000, 1000), (250, 300)]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    values = torch.rand(shape, generator=generator, dtype=torch.float64) * (high - low) + low
    special = draw(st.sampled_from([None, float("nan"), float("inf"), -float("inf")]))
    if special is not None and values.numel():
        values.view(-1)[draw(st.integers(0, values.numel() - 1))] = special
    if dtype.is_floating_point or dtype.is_complex:
        return values.to(dtype)
    if dtype == torch.bool:
        return values > (low + high) / 2
    info = torch.iinfo(dtype)
    return values.nan_to_num(0, posinf=info.max, neginf=info.min).clamp(info.min, info.max).round().to(dtype)


@fuzz_settings(60)
@given(tensor=tensors())
def test_tensors_are_captioned_or_refused_by_name(captioner, tensor):
    note(f"{tuple(tensor.shape)} {tensor.dtype}")
    try:
        captions = captioner.caption(tensor, **FAST)
    except BadImageError as e:
        assert e.source.startswith("<image") and "\n" not in str(e)
        return
    images = tensor.shape[0] if tensor.ndim == 4 else 1
    assert len(captions) == images and all(isinstance(c, str) for c in captions)
    if images == 0:  # an empty batch: no captions
        return
    pixels = tensor if tensor.ndim == 4 else tensor[None]
    if not tensor.is_floating_point():  # integer pixels: exactly the captions of the same pixels as uint8
        assert tensor.dtype != torch.bool and (
            pixels.numel() == 0 or 0 <= int(pixels.min()) <= int(pixels.max()) <= 255
        )
        assert captions == captioner.caption(pixels.to(torch.uint8), **FAST)
    else:
        assert bool(torch.isfinite(pixels.float()).all())  # a NaN image is never captioned


@fuzz_settings(40)
@given(
    width=st.integers(1, 400) | st.sampled_from([1, 2, 100, 101, 5000]),
    height=st.integers(1, 400) | st.sampled_from([1, 2, 100, 101]),
    mode=st.sampled_from(["RGB", "RGBA", "L", "LA", "P", "1", "I", "I;16", "F", "CMYK"]),
    seed=st.integers(0, 2**16),
)
def test_images_of_any_size_and_mode_are_captioned_or_refused_by_name(captioner, width, height, mode, seed):
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    try:
        captions = captioner.caption(image, **FAST)
    except BadImageError as e:
        assert max(width, height) > 100 * min(width, height)  # only an extreme aspect ratio is refused
        assert "extreme aspect ratio" in e.reason
        return
    assert len(captions) == 1 and isinstance(captions[0], str)
