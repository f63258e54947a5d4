"""What people pass to ``Captioner.caption`` besides paths: numpy arrays (as OpenCV / imageio / PIL give them), the
bytes of an image file, and http(s) URLs (from a server on 127.0.0.1 started here); each captioned exactly as the
same image read from its file."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from conftest import ROOT  # noqa: E402
from conftest import SHIPPED_IMAGES as FILES
from PIL import Image

from mmgen.data import BadImageError


@pytest.fixture(scope="module")
def captioner(shipped):
    return shipped


@pytest.fixture(scope="module")
def expected(captioner):
    return captioner.caption(FILES, num_beams=1)


class Handler(BaseHTTPRequestHandler):
    """/scene_K.png: the file; /big: 2 MB declared and sent; /nolength: a large body without Content-Length;
    /slow: answers after 3 s; /text: not an image; anything else: 404."""

    def do_GET(self):  # noqa: N802 - http.server's name
        name = self.path.lstrip("/")
        if name == "slow":
            time.sleep(3)
        if name in ("big", "nolength"):
            body = b"\x89PNG" + b"0" * 2_000_000
        elif name == "text":
            body = b"hello, not an image"
        elif (ROOT / "assets" / "images" / name).is_file():
            body = (ROOT / "assets" / "images" / name).read_bytes()
        else:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if name != "nolength":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: over its limit
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_numpy_arrays_bytes_and_pil_images_caption_as_their_files(captioner, expected):
    rgb = [np.asarray(Image.open(f).convert("RGB")) for f in FILES]  # (H, W, 3) uint8, as imageio / PIL give
    assert rgb[0].shape == (64, 64, 3) and rgb[0].dtype == np.uint8
    assert captioner.caption(rgb, num_beams=1) == expected
    assert captioner.caption(np.stack(rgb), num_beams=1) == expected  # (N, H, W, 3): N images
    assert captioner.caption(rgb[1], num_beams=1) == expected[1:2]  # one array is one image
    bgr = [a[..., ::-1] for a in rgb]  # OpenCV's order: the documented conversion gives the same captions
    assert captioner.caption([np.ascontiguousarray(a[..., ::-1]) for a in bgr], num_beams=1) == expected
    rgba = np.concatenate([rgb[2], np.full((64, 64, 1), 255, np.uint8)], axis=2)
    assert captioner.caption(rgba, num_beams=1) == expected[2:3]
    assert captioner.caption([f.read_bytes() for f in FILES], num_beams=1) == expected
    assert captioner.caption(FILES[3].read_bytes(), num_beams=1) == expected[3:]
    with pytest.raises(BadImageError, match=r"dtype float32; expected uint8"):
        captioner.caption(rgb[0].astype(np.float32) / 255)
    results = list(captioner.iter_captions([np.zeros((4, 5, 2), np.uint8), rgb[0]], skip_errors=True))
    assert "shape (4, 5, 2)" in results[0].error and results[1].caption is not None


def test_urls_are_downloaded_and_decoded_like_files(captioner, expected, server):
    urls = [f"{server}/{f.name}" for f in FILES]
    assert captioner.caption(urls, num_beams=1) == expected
    captioner.max_download_bytes = 1_000_000
    try:
        results = captioner.iter_captions(
            [f"{server}/missing.png", f"{server}/text", f"{server}/big", urls[0]], skip_errors=True, num_beams=1
        )
        missing, text, big, ok = list(results)
    finally:
        captioner.max_download_bytes = 20 * 2**20
    assert missing.source == f"{server}/missing.png" and "HTTP 404" in missing.error
    assert "not an image" in text.error
    assert "2000004 bytes is over the download limit of 1000000" in big.error  # the declared length: not read
    assert ok.caption == expected[0]


def test_download_limits_hold_without_a_declared_length_and_a_slow_server_times_out(captioner, server):
    captioner.max_download_bytes, captioner.url_timeout = 1_000_000, 0.5
    try:
        results = list(captioner.iter_captions([f"{server}/nolength", f"{server}/slow"], skip_errors=True))
    finally:
        captioner.max_download_bytes, captioner.url_timeout = 20 * 2**20, 10.0
    assert "over the download limit of 1000000 bytes" in results[0].error
    assert "download failed" in results[1].error and "timed out" in results[1].error


def test_python_dash_m_mmgen_runs_the_command_line():
    done = subprocess.run([sys.executable, "-m", "mmgen", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("mmgen ")
