"""Serving like LitServe / TGI: Prometheus metrics (read with prometheus_client's own parser), several images in one
request answered in order, ``/v1/model`` (the model card), and captions cut short at ``max_new_tokens`` marked."""

from __future__ import annotations

import base64
import json

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
parser = pytest.importorskip("prometheus_client.parser")
from conftest import SHIPPED_IMAGES as IMAGES  # noqa: E402
from conftest import SHIPPED_MODEL as MODEL  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from mmgen.serve import ServeSettings  # noqa: E402
from mmgen.serve.app import create_app  # noqa: E402


@pytest.fixture(scope="module")
def captioner(shipped):
    return shipped


def samples(client) -> dict[tuple[str, tuple], float]:
    """Every sample of ``/metrics``: (name, sorted labels) -> value."""
    text = client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parser.text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_requests_latencies_batches_and_failures(captioner):
    calls = []

    def generate(pixels, gen, **options):
        calls.append(len(pixels))
        if len(calls) == 3:
            raise RuntimeError("the search failed")
        return captioner.model.generate(pixels, gen, **options)

    settings = ServeSettings(max_wait_ms=0, model_name=str(MODEL))
    with TestClient(create_app(captioner, settings, generate=generate)) as client:
        for path in IMAGES[:2]:
            assert client.post("/v1/caption", files={"image": path.read_bytes()}).status_code == 200
        assert client.post("/v1/caption", files={"image": b"not an image"}).status_code == 422
        failed = client.post("/v1/caption", files={"image": IMAGES[2].read_bytes()})  # 500, the server goes on
        assert failed.status_code == 500 and "the search failed" in failed.json()["error"]
        payload = {"images": [base64.b64encode(p.read_bytes()).decode() for p in IMAGES]}
        assert client.post("/v1/caption", json=payload).status_code == 200
        got = samples(client)
    endpoint = ("endpoint", "/v1/caption")
    assert got[("mmgen_requests_total", (endpoint, ("status", "200")))] == 3
    assert got[("mmgen_requests_total", (endpoint, ("status", "422")))] == 1
    assert got[("mmgen_requests_total", (endpoint, ("status", "500")))] == 1
    assert got[("mmgen_request_duration_seconds_count", (endpoint,))] == 5
    assert got[("mmgen_batch_size_count", ())] == len(calls)  # one observation per search
    assert got[("mmgen_batch_size_sum", ())] == sum(calls) == 2 + 1 + 4
    assert got[("mmgen_images_total", ())] == sum(calls) - 1  # the failed search's image is not counted
    assert got[("mmgen_search_failures_total", ())] == 1
    assert got[("mmgen_queue_depth", ())] == 0


def test_several_images_in_one_request_are_answered_in_order(captioner):
    expected = captioner.caption(IMAGES, num_beams=1)
    order = [3, 0, 2, 1, 0]
    with TestClient(create_app(captioner, ServeSettings(max_images=5))) as client:
        payload = {"images": [base64.b64encode(IMAGES[i].read_bytes()).decode() for i in order], "beams": 1}
        answer = client.post("/v1/caption", json=payload).json()
        assert [r["caption"] for r in answer["results"]] == [expected[i] for i in order]
        files = [("image", (f"{i}.png", IMAGES[i].read_bytes(), "image/png")) for i in order[:3]]
        answer = client.post("/v1/caption", files=files, data={"beams": "1"}).json()
        assert [r["caption"] for r in answer["results"]] == [expected[i] for i in order[:3]]
        one = client.post("/v1/caption", files=[("images", ("a.png", IMAGES[1].read_bytes()))], data={"beams": "1"})
        assert one.json()["results"][0]["caption"] == expected[1]  # 'images' always answers a list
        six = {"images": payload["images"] + payload["images"][:1]}
        assert client.post("/v1/caption", json=six).status_code == 413
        bad = client.post("/v1/caption", json={"images": [payload["images"][0], base64.b64encode(b"x").decode()]})
        assert bad.status_code == 422 and "images[1]" in bad.json()["error"]


def test_v1_model_returns_the_card_and_its_facts(captioner):
    with TestClient(create_app(captioner, ServeSettings(model_name=str(MODEL)))) as client:
        facts = client.get("/v1/model").json()
    assert facts["name"] == "tiny-scenes-model" and facts["synthetic_data"] is True
    assert facts["trained_on"].startswith("synthetic scenes") and facts["trained_on"].endswith("4,000 images")
    assert facts["parameters"] == sum(p.numel() for p in captioner.model.parameters())
    metrics = json.loads((MODEL / "metrics.json").read_text())
    assert facts["scores"]["CIDEr-D"] == round(metrics["CIDEr"], 4)
    assert facts["card"] == (MODEL / "README.md").read_text() and facts["generation"]["num_beams"] == 3


def test_a_caption_cut_at_max_new_tokens_is_marked(captioner):
    with TestClient(create_app(captioner)) as client:
        short = client.post("/v1/caption", files={"image": IMAGES[0].read_bytes()}, data={"max_new_tokens": "3"})
        full = client.post("/v1/caption", files={"image": IMAGES[0].read_bytes()})
    assert short.json()["truncated"] == [True] and len(short.json()["caption"].split()) == 3
    assert full.json()["truncated"] == [False]
    # the independent reference: the model's own tokens end with its end-of-sequence token only when finished
    result = next(captioner.iter_captions(IMAGES[0], max_new_tokens=3, num_return_sequences=1))
    assert result.truncated == [True] and result.caption == short.json()["caption"]
