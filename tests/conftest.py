"""Shared test fixtures: offline tiny models, the optional ../shared/data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """``$MMGEN_SHARED_DATA`` or ``../shared/data`` beside the project root, when present."""
    env = os.environ.get("MMGEN_SHARED_DATA")
    path = Path(env) if env else ROOT.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    """The real-data folder; the test is skipped when it is absent."""
    path = shared_data_dir()
    if path is None:
        pytest.skip("shared data folder (../shared/data or $MMGEN_SHARED_DATA) is absent")
    return path


def fuzz_settings(examples: int):
    """Hypothesis settings of a fuzzing test: ``examples`` cases (times ``$MMGEN_FUZZ_SCALE``, 1 by default, for a
    longer hunt outside CI), no per-example deadline (a loaded CI machine is slow), nothing kept between runs."""
    from hypothesis import HealthCheck, settings

    scale = int(os.environ.get("MMGEN_FUZZ_SCALE", "1"))
    return settings(
        max_examples=examples * scale,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
        print_blob=True,
    )


SHIPPED_MODEL = ROOT / "assets" / "tiny-scenes-model"
SHIPPED_IMAGES = sorted((ROOT / "assets" / "images").glob("*.png"))


@pytest.fixture(scope="module")
def shipped():
    """A Captioner of the shipped tiny model on the CPU."""
    from mmgen.captioner import Captioner

    return Captioner.from_pretrained(SHIPPED_MODEL, device="cpu")
