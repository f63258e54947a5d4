"""The oldest transformers release pyproject.toml allows passes the decoding and attention tests too.

CI installs that release into a side folder (``.ci/run``) and names it in ``$MMGEN_OLDEST_TRANSFORMERS``; this
test runs the tests that depend most on transformers' internals (search against ``generate``, the attention
implementations, the static cache) in a subprocess that imports it first. The newest allowed release is the
one the suite itself runs on.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBSET = ["tests/test_generation.py", "tests/test_attention.py", "tests/test_prefix_attention.py"]


def _lower_bound() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'"transformers>=([0-9.]+),', text).group(1)


def test_oldest_allowed_transformers_passes_the_decoding_tests():
    folder = os.environ.get("MMGEN_OLDEST_TRANSFORMERS")
    if not folder:
        pytest.skip("$MMGEN_OLDEST_TRANSFORMERS is not set (CI installs the oldest allowed transformers there)")
    code = "import transformers; print(transformers.__version__)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([folder, str(ROOT)])}
    version = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert version.stdout.strip() == _lower_bound()  # the folder holds exactly the release pyproject allows first
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *SUBSET],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
