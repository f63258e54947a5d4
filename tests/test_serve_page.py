"""The upload page in a real headless Chromium: choose an image, see its caption beside it.

Driven over the Chrome DevTools Protocol (``websockets``); skipped where ``/usr/bin/chromium`` is absent.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("/usr/bin/chromium is absent", allow_module_level=True)
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")
sync_client = pytest.importorskip("websockets.sync.client")

from mmgen.captioner import Captioner  # noqa: E402
from mmgen.serve import ServeSettings  # noqa: E402
from mmgen.serve.app import create_app  # noqa: E402
from mmgen.serve.server import BackgroundServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "assets" / "tiny-scenes-model"
IMAGE = ROOT / "assets" / "images" / "scene_2.png"


class Browser:
    """Headless Chromium with one page, commanded over the DevTools websocket."""

    def __init__(self, profile: Path) -> None:
        args = [
            str(CHROMIUM),
            "--headless=new",
            "--no-sandbox",  # tests run as root in a container
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",  # no connections out of this closed machine
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self._connection = sync_client.connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.ws = self._connection.__enter__()
        self.ids = itertools.count(1)

    def send(self, method: str, **params) -> dict:
        """Run one DevTools command and return its result (events in between are skipped)."""
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def evaluate(self, expression: str):
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 60.0):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {expression}")

    def close(self) -> None:
        self._connection.__exit__(None, None, None)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path / "profile")
    yield b
    b.close()
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


BROKEN_IMAGES = """[...document.images].filter((img) => {
  const box = img.getBoundingClientRect();
  const shown = box.width > 0 && box.height > 0 && getComputedStyle(img).visibility !== "hidden";
  return shown && !(img.complete && img.naturalWidth > 0);
}).map((img) => img.id || img.alt)"""
"""The images the page shows that have no picture (the browser draws its broken-image icon for them)."""


def test_the_empty_page_shows_no_broken_image_and_names_the_model(browser, tmp_path):
    captioner = Captioner.from_pretrained(MODEL, device="cpu")
    with BackgroundServer(create_app(captioner, ServeSettings(model_name=str(MODEL)))) as server:
        browser.send("Page.enable")
        browser.send("Page.navigate", url=server.url + "/")
        browser.wait_for("document.readyState === 'complete' && !!document.querySelector('#file')")
        shown = browser.wait_for("document.querySelector('#model b') && document.querySelector('#model').textContent")
        shot = browser.send("Page.captureScreenshot", format="png")["data"]
        (tmp_path / "empty.png").write_bytes(base64.b64decode(shot))  # to look at when the test fails
        assert browser.evaluate(BROKEN_IMAGES) == []
        assert browser.evaluate("getComputedStyle(document.querySelector('#result')).display") == "none"
    assert "tiny-scenes-model" in shown and "trained on synthetic scenes" in shown and "4,000 images" in shown


def test_the_broken_image_check_finds_a_broken_image(browser):
    """The check above can fail: an image element with no picture, shown, is found."""
    browser.send("Page.navigate", url="data:text/html,<img id=x alt=x style='width:50px;height:50px'>")
    browser.wait_for("document.readyState === 'complete'")
    assert browser.evaluate(BROKEN_IMAGES) == ["x"]


def test_choose_an_image_and_see_its_caption(browser, tmp_path):
    captioner = Captioner.from_pretrained(MODEL, device="cpu")
    expected = captioner.caption(IMAGE)[0]
    with BackgroundServer(create_app(captioner)) as server:
        browser.send("Page.enable")
        browser.send("Page.navigate", url=server.url + "/")
        browser.wait_for("document.readyState === 'complete' && !!document.querySelector('#file')")
        root = browser.send("DOM.getDocument")["root"]["nodeId"]
        node = browser.send("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
        browser.send("DOM.setFileInputFiles", files=[str(IMAGE)], nodeId=node)  # as if chosen in the dialog
        shown = browser.wait_for("document.querySelector('#caption').textContent")
        assert shown == expected
        assert browser.evaluate("document.querySelector('#error').textContent") == ""
        assert browser.evaluate("document.querySelector('#preview').naturalWidth") == 64  # the image beside it
        assert browser.evaluate(BROKEN_IMAGES) == []
        shot = browser.send("Page.captureScreenshot", format="png")["data"]
        (tmp_path / "page.png").write_bytes(base64.b64decode(shot))  # to look at when the test fails

        bad = tmp_path / "notes.png"
        bad.write_text("not an image")
        browser.send("DOM.setFileInputFiles", files=[str(bad)], nodeId=node)
        error = browser.wait_for("document.querySelector('#error').textContent")
        assert "notes.png: not an image" in error
        assert browser.evaluate("document.querySelector('#caption').textContent") == ""
