"""``scripts/serve_benchmark.py``: its plumbing on the CPU with the shipped model (speed itself is never asserted)."""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import serve_benchmark

        yield serve_benchmark
    finally:
        sys.path.remove(str(ROOT / "scripts"))


def free_ports() -> int:
    """A port p such that p and p + 1 were free a moment ago."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no two adjacent free ports")


def table_rows(out: str) -> dict[tuple[str, int], list[str]]:
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 9 and cells[1].isdigit():
            rows[(cells[0], int(cells[1]))] = cells
    return rows


def test_both_servers_answer_as_the_captioner_and_the_search_alone_is_timed(bench, capsys):
    argv = ["--requests", "12", "--clients", "3", "--rounds", "1", "--images", "3", "--port", str(free_ports())]
    assert bench.main(argv) == 0  # non-zero when any answer differs from Captioner.caption
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert set(rows) == {(name, c) for name in ("one request at a time", "dynamic batching") for c in (1, 3)}
    assert rows[("one request at a time", 3)][5] == "1.0"  # --max-batch 1: every search holds one image
    assert rows[("one request at a time", 1)][7] == "1.00×" and rows[("one request at a time", 3)][8] == "1.00×"
    assert "answers different from Captioner.caption: 0 of 48" in out
    assert re.search(r"search alone, CPU-ms per image: [\d.]+ at batch 1, [\d.]+ at batch \d+ \([\d.]+×\)", out)


@pytest.mark.parametrize("pure", [False, True])
def test_no_search_serves_a_constant_caption_with_either_http_stack(bench, capsys, pure):
    argv = ["--requests", "12", "--clients", "3", "--rounds", "1", "--images", "2", "--no-search"]
    argv += ["--port", str(free_ports())] + (["--pure-python-http"] if pure else [])
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert len(table_rows(out)) == 4 and "answers failed: 0 of 48" in out
    assert "search alone" not in out


def test_pure_python_http_needs_no_search(bench, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--pure-python-http"])
    assert e.value.code == 2 and "--pure-python-http goes with --no-search" in capsys.readouterr().err
