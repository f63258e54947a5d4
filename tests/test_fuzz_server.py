"""``mmgen serve`` fuzzed from its own OpenAPI schema (schemathesis), in process with the shipped model: requests
that fit the schema and requests that do not, multipart and JSON. A 5xx, a hang, an answer that does not fit the
schema or a schema-invalid request that is accepted is a failure."""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path

import pytest
from conftest import fuzz_settings
from hypothesis import strategies as st
from PIL import Image

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("fastapi")
pytest.importorskip("multipart")

from schemathesis.checks import negative_data_rejection, positive_data_acceptance  # noqa: E402

from mmgen.captioner import Captioner  # noqa: E402
from mmgen.serve import ServeSettings  # noqa: E402
from mmgen.serve.app import create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FORM = "multipart/form-data"


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 90).save(buf, format="PNG")
    return buf.getvalue()


IMAGES = [(ROOT / "assets" / "images" / "scene_3.png").read_bytes(), _png((1, 1)), _png((300, 2)), _png((7, 5), "L")]
# JSON's image (format: byte): base64 of real images, one wrapped in lines, and of anything at all
schemathesis.openapi.format(
    "byte",
    st.sampled_from([base64.b64encode(i).decode() for i in IMAGES] + [base64.encodebytes(IMAGES[0]).decode()])
    | st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
)

captioner = Captioner.from_pretrained(ROOT / "assets" / "tiny-scenes-model", device="cpu")
app = create_app(captioner, ServeSettings(max_body_bytes=100_000, max_pixels=1_000_000))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module", autouse=True)
def worker():
    app.state.batcher.start()  # the app's lifespan, which the in-process calls do not run
    yield
    app.state.batcher.stop()


def _call(case):
    """Call and check the answer on a thread: a request still running after two minutes is a hang."""
    outcome: list = []

    # every check but positive data acceptance: a schema-valid upload may not be an image, and a prompt within the
    # 500 characters may still hold more tokens than the decoder has positions (422, saying why); and in a form,
    # where every value is text, an "integer" for a text field is that text (a bad word "-13", say)
    excluded = [positive_data_acceptance] + ([negative_data_rejection] if case.media_type == FORM else [])

    def run() -> None:
        try:
            outcome.append(case.call_and_validate(excluded_checks=excluded))
        except BaseException as e:  # noqa: BLE001 - re-raised on the test's thread
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), f"the server did not answer within two minutes: {case.as_curl_command()}"
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


@schema.parametrize()
@fuzz_settings(80)
def test_the_api_never_fails_on_its_own_schema(case):
    response = _call(case)
    assert response.status_code < 500, response.text
