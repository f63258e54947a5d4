"""``mmgen serve`` under bad input and failures: a 4xx naming the problem for what a client sends, a 500 naming the
error (and a worker that goes on) for a failed search, a ``/health`` that tells the truth, one log line for a client
that leaves, and no work for a request nobody waits for."""

from __future__ import annotations

import base64
import http.client
import io
import logging
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient  # noqa: E402

from mmgen.captioner import Captioner  # noqa: E402
from mmgen.generation.captions import GeneratedCaptions  # noqa: E402
from mmgen.serve import ServeSettings  # noqa: E402
from mmgen.serve.app import create_app  # noqa: E402
from mmgen.serve.loadtest import multipart  # noqa: E402
from mmgen.serve.server import BackgroundServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "assets" / "tiny-scenes-model"
IMAGE = ROOT / "assets" / "images" / "scene_2.png"


@pytest.fixture(scope="module")
def captioner():
    return Captioner.from_pretrained(MODEL, device="cpu")


@pytest.fixture(scope="module")
def client(captioner):
    with TestClient(create_app(captioner)) as c:
        yield c


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size).save(buf, format="PNG")
    return buf.getvalue()


def test_hostile_json_gets_400_never_500(client):
    b64 = base64.b64encode(IMAGE.read_bytes()).decode()
    cases = {
        '"beams": Infinity': "Infinity is not a JSON number",
        '"beams": -Infinity': "-Infinity is not a JSON number",
        '"beams": NaN': "NaN is not a JSON number",
        '"beams": 1e400': "the number 1e400 is out of range",
        '"beams": ' + "1" * 5000: "invalid JSON",  # more digits than Python turns into an int
        '"x": ' + "[" * 100_000 + "]" * 100_000: "nested too deeply",
    }
    for extra, message in cases.items():
        body = '{"image": "' + b64 + '", ' + extra + "}"
        answer = client.post("/v1/caption", content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == 400, (extra[:30], answer.text[:200])
        assert message in answer.json()["error"]
    answer = client.post("/v1/caption", json={"image": b64, "beams": 1e300})  # a finite float: not an integer
    assert answer.status_code == 422 and "beams: expected an integer" in answer.json()["error"]


def test_a_prompt_longer_than_the_decoders_positions_is_422_naming_them(client, captioner):
    prompt = " ".join(["a"] * 250)  # within the 500-character limit; 250 tokens, the decoder has 128 positions
    assert len(prompt) <= 500
    answer = client.post("/v1/caption", files={"image": ("a.png", IMAGE.read_bytes())}, data={"prompt": prompt})
    assert answer.status_code == 422
    assert (
        "max_new_tokens: 24 new tokens after 16 image tokens and 251 token(s) of BOS and the prompt need 290"
        in (answer.json()["error"])
    )
    assert "the decoder has 128" in answer.json()["error"]
    fits = client.post("/v1/caption", files={"image": ("a.png", IMAGE.read_bytes())}, data={"max_new_tokens": "64"})
    assert fits.status_code == 200  # the largest a request may ask fits this model


def test_a_wide_image_is_422_before_any_resize(client):
    answer = client.post("/v1/caption", files={"image": ("wide.png", _png((100_000, 1)))})
    assert answer.status_code == 422
    assert answer.json()["error"].startswith("wide.png: extreme aspect ratio: 100000x1")


def test_base64_wrapped_at_76_columns_is_accepted(client, captioner):
    text = base64.encodebytes(IMAGE.read_bytes()).decode()  # what the base64 tool writes: lines of 76
    assert "\n" in text
    answer = client.post("/v1/caption", json={"image": text, "beams": 1})
    assert answer.status_code == 200
    assert answer.json()["caption"] == captioner.caption(IMAGE, num_beams=1)[0]
    crlf = text.replace("\n", "\r\n")
    assert client.post("/v1/caption", json={"image": "data:image/png;base64," + crlf}).status_code == 200


def test_a_multipart_body_cut_before_its_closing_boundary_says_so(client):
    body, kind = multipart(IMAGE.read_bytes(), "a.png")
    cut = body[: len(body) // 2]
    answer = client.post("/v1/caption", content=cut, headers={"Content-Type": kind})
    assert answer.status_code == 400
    assert "the body ends before its closing boundary" in answer.json()["error"]
    assert client.post("/v1/caption", content=body, headers={"Content-Type": kind}).status_code == 200


def test_a_failing_search_is_500_for_its_requests_and_the_worker_goes_on(captioner, caplog):
    calls = []

    def flaky(pixels, gen, prompt=None, **_):
        calls.append(pixels.shape[0])
        if len(calls) == 1:
            raise RuntimeError("CUDA error: an illegal memory access\nwas encountered")
        return captioner.model.generate(pixels, gen, prompt=prompt)

    image = {"image": ("a.png", IMAGE.read_bytes())}
    with caplog.at_level(logging.ERROR, logger="mmgen.serve"), TestClient(create_app(captioner, generate=flaky)) as c:
        failed = c.post("/v1/caption", files=image)
        assert failed.status_code == 500
        assert failed.json()["error"] == (
            "captioning failed: RuntimeError: CUDA error: an illegal memory access was encountered"
        )
        answer = c.post("/v1/caption", files=image)
        assert answer.status_code == 200 and answer.json()["caption"] == captioner.caption(IMAGE)[0]
        health = c.get("/health")
        assert health.status_code == 200
        assert health.json()["status"] == "ok" and health.json()["worker"] == "running"
        assert health.json()["failed_batches"] == 1 and "illegal memory access" in health.json()["last_error"]
    logged = [r.getMessage() for r in caplog.records if r.name == "mmgen.serve"]
    assert logged == [
        "captioning 1 request(s) failed: RuntimeError: CUDA error: an illegal memory access was encountered"
    ]


def test_health_reports_a_dead_worker_and_requests_get_503(captioner):
    def fatal(pixels, gen, prompt=None, **_):
        raise SystemExit("stop")  # ends the worker thread, as a bug beyond Exception would

    image = {"image": ("a.png", IMAGE.read_bytes())}
    with TestClient(create_app(captioner, generate=fatal)) as c:
        assert c.get("/health").json()["status"] == "ok"
        first = c.post("/v1/caption", files=image)
        assert first.status_code == 500 and "the captioning worker stopped (SystemExit: stop)" in first.text
        deadline = time.monotonic() + 10
        while c.get("/health").status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        health = c.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "error" and health.json()["worker"] == "dead: SystemExit: stop"
        again = c.post("/v1/caption", files=image)
        assert again.status_code == 503 and "not running (dead: SystemExit: stop)" in again.json()["error"]


def _send(url: str, data: bytes) -> socket.socket:
    host, port = url.rsplit("/", 1)[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(data)
    return sock


def _request(body: bytes, kind: str, declared: int | None = None) -> bytes:
    head = f"POST /v1/caption HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\nContent-Length: {declared or len(body)}"
    return head.encode() + b"\r\n\r\n" + body


def _logged(caplog, text: str, seconds: float = 10) -> list[str]:
    deadline = time.monotonic() + seconds
    while True:
        lines = [r.getMessage() for r in caplog.records if r.name == "mmgen.serve"]
        if any(text in line for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.01)


def test_a_client_leaving_is_one_log_line_and_its_request_is_not_computed(captioner, caplog, capfd):
    release, calls = threading.Event(), []

    def held(pixels, gen, prompt=None, **_):
        calls.append(pixels.shape[0])
        release.wait(30)
        return GeneratedCaptions([["c"]] * pixels.shape[0], [[0.0]] * pixels.shape[0])

    app = create_app(captioner, ServeSettings(max_batch=1, max_wait_ms=0), generate=held)
    body, kind = multipart(IMAGE.read_bytes(), "a.png")
    answers = []

    def post() -> None:
        host, port = server.url.rsplit("/", 1)[1].split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/v1/caption", body=body, headers={"Content-Type": kind})
        answers.append(conn.getresponse().status)
        conn.close()

    with caplog.at_level(logging.INFO, logger="mmgen.serve"), BackgroundServer(app) as server:
        _send(server.url, _request(body[:100], kind, declared=len(body))).close()  # leaves mid-body
        lines = _logged(caplog, "disconnected after 100 bytes")
        assert any(line.endswith("the client disconnected after 100 bytes of its request body") for line in lines)
        first = threading.Thread(target=post)
        first.start()  # held in the search
        deadline = time.monotonic() + 10
        while not calls:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        leaving = _send(server.url, _request(body, kind))  # queued behind it, then gone
        while app.state.batcher.queued != 1:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        leaving.close()
        lines = _logged(caplog, "disconnected while waiting")
        assert any(line.endswith("the client disconnected while waiting") for line in lines)
        release.set()
        first.join(30)
        post()  # served as ever
    assert answers == [200, 200]
    assert calls == [1, 1]  # the first and the last request: the abandoned one was never captioned
    assert "Traceback" not in capfd.readouterr().err
