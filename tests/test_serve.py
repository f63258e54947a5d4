"""``mmgen serve``: the API through an in-process client, dynamic batching, limits, and a bounded load test."""

from __future__ import annotations

import base64
import http.client
import io
import struct
import threading
import time
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")
from fastapi.testclient import TestClient  # noqa: E402

from mmgen.captioner import Captioner  # noqa: E402
from mmgen.commands.cli import main  # noqa: E402
from mmgen.generation.captions import GeneratedCaptions  # noqa: E402
from mmgen.serve import ServeSettings  # noqa: E402
from mmgen.serve.app import create_app  # noqa: E402
from mmgen.serve.batcher import Batcher, Job, QueueFull  # noqa: E402
from mmgen.serve.loadtest import multipart, run_load  # noqa: E402
from mmgen.serve.server import BackgroundServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "assets" / "tiny-scenes-model"
IMAGES = sorted((ROOT / "assets" / "images").glob("*.png"))


@pytest.fixture(scope="module")
def captioner():
    return Captioner.from_pretrained(MODEL, device="cpu")


@pytest.fixture(scope="module")
def client(captioner):
    app = create_app(captioner, ServeSettings(max_body_bytes=200_000, max_pixels=1_000_000, max_beams=4))
    with TestClient(app) as c:
        yield c


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels (one compressed row of zeros, repeated)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    pixels = zlib.compress(b"\0" * (width + 1) * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "options,kwargs",
    [
        ({}, {}),
        ({"beams": 1, "max_new_tokens": 6}, {"num_beams": 1, "max_new_tokens": 6}),
        ({"beams": 3, "num_return_sequences": 2}, {"num_beams": 3, "num_return_sequences": 2}),
        (
            {"prompt": "a picture of a", "bad_words": ["red", "small"]},
            {"prompt": "a picture of a", "bad_words": ["red", "small"]},
        ),
    ],
)
def test_multipart_and_json_answers_equal_the_captioner(client, captioner, options, kwargs):
    for path in IMAGES:
        expected = captioner.caption_with_scores(path, **kwargs)[0]
        data = path.read_bytes()
        form = {k: ",".join(v) if isinstance(v, list) else str(v) for k, v in options.items()}
        by_form = client.post("/v1/caption", files={"image": (path.name, data)}, data=form)
        by_json = client.post("/v1/caption", json={"image": base64.b64encode(data).decode(), **options})
        for answer in (by_form, by_json):
            assert answer.status_code == 200, answer.text
            got = answer.json()
            assert got["caption"] == expected[0][0]
            assert got["captions"] == [c for c, _ in expected]
            assert got["scores"] == pytest.approx([s for _, s in expected], abs=1e-5)


def test_resolved_settings_are_reused_until_the_defaults_change(captioner):
    from mmgen.serve.app import ApiError, parse_options

    settings, cache = ServeSettings(max_beams=4), {}
    first, _ = parse_options({"beams": "2"}, captioner, settings, cache)
    again, _ = parse_options({"beams": 2}, captioner, settings, cache)  # a form's text and JSON's number alike
    assert again is first and first == captioner.resolve_generation(num_beams=2, num_return_sequences=1)
    assert parse_options({}, captioner, settings, cache)[0].num_beams == captioner.generation.num_beams
    saved = captioner.generation
    try:  # new defaults (``mmgen serve --max-new-tokens``-like) are never answered from the old ones
        captioner.generation = captioner.resolve_generation(max_new_tokens=5)
        changed, _ = parse_options({"beams": 2}, captioner, settings, cache)
        assert changed.max_new_tokens == 5 and changed.num_beams == 2
    finally:
        captioner.generation = saved
    for _ in range(2):  # a refused combination is refused every time, not remembered as settings
        with pytest.raises(ApiError, match="num_return_sequences"):
            parse_options({"beams": 2, "num_return_sequences": 3}, captioner, settings, cache)


def test_a_data_url_is_accepted(client, captioner):
    url = "data:image/png;base64," + base64.b64encode(IMAGES[0].read_bytes()).decode()
    answer = client.post("/v1/caption", json={"image": url, "beams": 1})
    assert answer.json()["caption"] == captioner.caption(IMAGES[0], num_beams=1)[0]


def test_bad_uploads_get_a_clear_4xx_and_the_server_keeps_serving(client, captioner):
    good = IMAGES[0].read_bytes()
    truncated = good[: len(good) // 2]
    cases = [
        (dict(files={"image": ("notes.txt", b"just some text")}), 422, "notes.txt: not an image"),
        (dict(files={"image": ("half.png", truncated)}), 422, "half.png: "),
        (dict(files={"image": ("bomb.png", png_bomb(2_000, 2_000))}), 413, "too many pixels: 2000x2000 = 4000000 > "),
        (dict(files={"image": ("huge.png", png_bomb(20_000, 20_000))}), 413, "huge.png: too many pixels"),
        (dict(files={"image": ("big.png", b"\0" * 300_000)}), 413, "over the limit of 200000 bytes"),
        (dict(content=good, headers={"Content-Type": "image/png"}), 415, "multipart/form-data or application/json"),
        (dict(files={"picture": ("a.png", good)}), 422, "the form needs a file field 'image'"),
        (dict(files={"image": ("a.png", good)}, data={"beams": "two"}), 422, "beams: expected an integer, got 'two'"),
        (dict(files={"image": ("a.png", good)}, data={"beams": "9"}), 422, "beams: must be between 1 and 4"),
        (dict(files={"image": ("a.png", good)}, data={"temperature": "2"}), 422, "unknown option(s) ['temperature']"),
        (dict(json={"image": "%%%"}), 422, "'image' is not valid base64"),
        (dict(json={"picture": "x"}), 422, "an object with 'image'"),
        (dict(content=b"{not json", headers={"Content-Type": "application/json"}), 400, "invalid JSON"),
        (
            dict(json={"image": base64.b64encode(good).decode(), "beams": 2, "num_return_sequences": 3}),
            422,
            "num_return_sequences",
        ),
    ]
    for kwargs, status, message in cases:
        answer = client.post("/v1/caption", **kwargs)
        assert answer.status_code == status, (kwargs.keys(), answer.text)
        assert message in answer.json()["error"], answer.json()
    answer = client.post("/v1/caption", files={"image": ("a.png", good)})
    assert answer.status_code == 200 and answer.json()["caption"] == captioner.caption(IMAGES[0])[0]


def test_health_schema_and_page(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["max_queue"] == 256 and health["images"] >= 0
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/caption"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert "429" in schema["paths"]["/v1/caption"]["post"]["responses"]
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text and "/v1/caption" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing loaded from elsewhere


@pytest.fixture
def held_search():
    """A search to hand the batcher in place of the model's: it waits for ``release`` and records batch sizes (and
    settings)."""
    release, calls = threading.Event(), []

    def fake(pixels, gen, prompt=None, **_):
        calls.append((pixels.shape[0], gen.num_beams, prompt))
        release.wait(30)
        n = pixels.shape[0]
        return GeneratedCaptions([[f"c{i}"] for i in range(n)], [[0.0] for _ in range(n)])

    yield release, calls, fake
    release.set()


def _wait(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_batcher_gathers_jobs_with_the_same_settings(captioner, held_search):
    release, calls, search = held_search
    batcher = Batcher(search, max_batch=4, max_wait=0.0, max_queue=8).start()
    try:
        pixels = torch.zeros(3, 64, 64)
        greedy, beam = captioner.resolve_generation(num_beams=1), captioner.resolve_generation(num_beams=3)
        first = batcher.submit(Job(pixels, greedy, None))
        _wait(lambda: len(calls) == 1)  # the worker is busy with the first job
        jobs = [Job(pixels, greedy if i % 3 else beam, None) for i in range(7)]  # beam at 0, 3, 6
        jobs.append(Job(pixels, greedy, "a picture of"))  # another prompt: another batch
        futures = [batcher.submit(j) for j in jobs]
        with pytest.raises(QueueFull, match="8 requests are queued already"):
            batcher.submit(Job(pixels, greedy, None))
        release.set()
        results = [f.result(10) for f in [first, *futures]]
    finally:
        batcher.stop()
    # the oldest waiting job (beam) leads and takes the other beam jobs; then the greedy ones; then the prompt
    assert calls == [(1, 1, None), (3, 3, None), (4, 1, None), (1, 1, "a picture of")]
    assert [r.batch_size for r in results] == [1, 3, 4, 4, 3, 4, 4, 3, 1]
    assert batcher.images == 9 and batcher.batches == 4


def test_a_lone_request_does_not_wait_for_company(captioner, held_search):
    release, calls, search = held_search
    release.set()
    batcher = Batcher(search, max_batch=4, max_wait=600.0, max_queue=8).start()
    try:  # one client at a time: the 10-minute window is not waited for
        for _ in range(2):
            assert batcher.submit(Job(torch.zeros(3, 64, 64), captioner.generation, None)).result(60).batch_size == 1
    finally:
        batcher.stop()


def test_a_full_queue_answers_429_and_the_server_recovers(captioner, held_search):
    release, calls, search = held_search
    app = create_app(captioner, ServeSettings(max_queue=2, max_wait_ms=0), generate=search)
    body, kind = multipart(IMAGES[0].read_bytes(), "a.png")
    statuses = []

    def post() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("POST", "/v1/caption", body=body, headers={"Content-Type": kind})
        response = conn.getresponse()
        statuses.append((response.status, response.getheader("Retry-After"), response.read()))
        conn.close()

    with BackgroundServer(app) as server:
        host, port = server.url.rsplit("/", 1)[1].split(":")
        threads = [threading.Thread(target=post) for _ in range(3)]
        threads[0].start()
        _wait(lambda: len(calls) == 1)  # one request in the search, held
        for t in threads[1:]:
            t.start()
        _wait(lambda: app.state.batcher.queued == 2)  # two more fill the queue
        post()  # the fourth is refused at once
        assert statuses[-1][:2] == (429, "1") and b"2 requests are queued already" in statuses[-1][2]
        release.set()
        for t in threads:
            t.join(30)
        post()
    assert [s for s, _, _ in statuses].count(200) == 4


def test_load_200_requests_from_16_clients_equal_the_captioner(captioner, tmp_path):
    """Every answer is Captioner.caption of its image; throughput and latency are reported, not asserted."""
    from mmgen.scenes.writer import make_scenes

    make_scenes(tmp_path, 12, seed=3)
    paths = IMAGES + sorted((tmp_path / "images" / "train").glob("*.png"))
    images = [(p.name, p.read_bytes()) for p in paths]
    expected = {p.name: captioner.caption(p)[0] for p in paths}  # one image at a time
    assert len(set(expected.values())) > 8  # different images, different answers: a mix-up would show
    with BackgroundServer(create_app(captioner)) as server:
        batched = run_load(server.url, images, requests=200, concurrency=16)
    with BackgroundServer(create_app(captioner, ServeSettings(max_batch=1, max_wait_ms=0))) as server:
        single = run_load(server.url, images, requests=48, concurrency=1)
    for report in (batched, single):
        assert report.statuses == [200] * report.requests
        for i, answer in enumerate(report.answers):
            assert answer["caption"] == expected[images[i % len(images)][0]], i
    print(f"\nbatched:  {batched.summary()}\none at a time: {single.summary()}")
    print(f"throughput ratio {batched.throughput / single.throughput:.1f}x")


def test_the_serve_command_builds_the_app_from_its_options(monkeypatch, capsys):
    import mmgen.serve.server

    seen = {}

    def fake_serve(app, host, port, log_level):
        seen.update(app=app, host=host, port=port, log_level=log_level)

    monkeypatch.setattr(mmgen.serve.server, "serve", fake_serve)
    argv = ["serve", "--model", str(MODEL), "--max-batch", "4", "--max-queue", "9", "--port", "8123", "--device", "cpu"]
    assert main(argv) == 0
    settings = seen["app"].state.settings
    assert (seen["host"], seen["port"], settings.max_batch, settings.max_queue) == ("127.0.0.1", 8123, 4, 9)
    assert "http://127.0.0.1:8123/" in capsys.readouterr().err
    import mmgen.serve.app

    made = {}
    real = mmgen.serve.app.create_app
    monkeypatch.setattr(
        mmgen.serve.app, "create_app", lambda c, s, **kw: made.setdefault("captioner", c) and real(c, s, **kw)
    )
    argv = ["serve", "--model", str(MODEL), "--device", "cpu", "generation.num_beams=1", "generation.max_new_tokens=7"]
    assert main(argv) == 0 and capsys.readouterr()
    gen = made["captioner"].generation  # the default settings of every request
    assert (gen.num_beams, gen.max_new_tokens) == (1, 7)
    assert main(["serve", "--model", str(MODEL), "generation.beams=2"]) == 2
    assert "unknown key 'generation.beams'" in capsys.readouterr().err
    monkeypatch.setattr("mmgen.serve.missing_packages", lambda: ["uvicorn"])
    assert main(["serve", "--model", str(MODEL)]) == 2
    assert "serving needs uvicorn: pip install 'mmgen[serve]'" in capsys.readouterr().err


def test_an_image_file_in_memory_gets_the_same_caption_as_on_disk(client, captioner):
    im = Image.open(IMAGES[2]).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format="BMP")
    answer = client.post("/v1/caption", files={"image": ("x.bmp", buf.getvalue())})
    assert answer.json()["caption"] == captioner.caption(im)[0]
