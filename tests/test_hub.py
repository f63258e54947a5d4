"""The Hub: a repo id loads from a Hugging Face cache folder offline; uploads go through huggingface_hub's real
HfApi calls, with only its HTTP client replaced by one that records the requests and answers as the Hub does."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from mmgen import Captioner
from mmgen.commands.cli import main
from mmgen.errors import MissingCheckpointFileError
from mmgen.hub import looks_like_repo_id, resolve_model_dir

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "assets" / "tiny-scenes-model"
IMAGES = ROOT / "assets" / "images"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(cache: Path, repo_id: str, model: Path, revision: str = "main", commit: str = COMMIT) -> Path:
    """Lay ``model``'s files out as huggingface_hub's cache does: blobs named by content hash, a snapshot folder per
    commit whose files link to the blobs, and a ref naming the commit (https://huggingface.co/docs/huggingface_hub/
    guides/manage-cache)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for f in sorted(p for p in model.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / f.relative_to(model)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (len(f.relative_to(model).parts) + 1), "blobs", blob.name))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


@pytest.fixture
def offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_repo_ids_and_paths():
    assert looks_like_repo_id("owner/name") and looks_like_repo_id("gpt2") and looks_like_repo_id("a-b/c_d.e")
    assert not looks_like_repo_id("runs/x/best") and not looks_like_repo_id("../x") and not looks_like_repo_id("/x")
    assert not looks_like_repo_id("owner/") and not looks_like_repo_id("a b/c")


def test_a_repo_id_loads_from_the_hub_cache_offline(tmp_path, offline):
    cache = tmp_path / "hub"
    hub_cache(cache, "someone/tiny-scenes", MODEL)
    hub_cache(cache, "someone/tiny-scenes", MODEL, revision="v1", commit="f" * 40)
    expected = Captioner.from_pretrained(MODEL, device="cpu").caption(sorted(IMAGES.glob("*.png")))
    loaded = Captioner.from_pretrained("someone/tiny-scenes", device="cpu", cache_dir=cache)
    assert loaded.caption(sorted(IMAGES.glob("*.png"))) == expected
    assert "snapshots/" + COMMIT in str(resolve_model_dir("someone/tiny-scenes", cache_dir=cache))
    assert str(resolve_model_dir("someone/tiny-scenes", revision="v1", cache_dir=cache)).endswith("f" * 40)
    with pytest.raises(MissingCheckpointFileError, match="not in the Hugging Face cache"):
        resolve_model_dir("someone/other", cache_dir=cache)
    with pytest.raises(MissingCheckpointFileError, match="no such model directory"):
        resolve_model_dir(tmp_path / "a" / "b" / "c")


def test_the_caption_command_takes_a_repo_id(tmp_path, offline, monkeypatch, capsys):
    cache = tmp_path / "hub"
    hub_cache(cache, "someone/tiny-scenes", MODEL)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    code = main(["caption", str(IMAGES / "scene_2.png"), "--model", "someone/tiny-scenes", "--device", "cpu"])
    out = capsys.readouterr()
    assert code == 0 and out.out.count("\t") == 1
    assert main(["caption", str(IMAGES / "scene_2.png"), "--model", "someone/missing", "--device", "cpu"]) == 2
    assert "not in the Hugging Face cache" in capsys.readouterr().err


class FakeHub:
    """Answers the Hub's HTTP API the way huggingface.co does, for the requests an upload makes, and records them."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []

    def __call__(self, request):
        import httpx2 as httpx  # huggingface_hub's HTTP client

        body = request.read()
        path = request.url.path
        self.requests.append((request.method, path, body))
        if path == "/api/repos/create":
            name = json.loads(body)
            return httpx.Response(200, json={"url": f"https://huggingface.co/{name['organization']}/{name['name']}"})
        if path == "/api/validate-yaml":
            return httpx.Response(200, json={})
        if "/preupload/" in path:
            files = json.loads(body)["files"]
            answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            return httpx.Response(200, json={"files": answer})
        if "/branch/" in path:
            return httpx.Response(200, json={})
        if "/commit/" in path:
            repo = path.removeprefix("/api/models/").split("/commit/")[0]
            url = f"https://huggingface.co/{repo}/commit/{'a' * 40}"
            return httpx.Response(200, json={"commitUrl": url, "commitOid": "a" * 40})
        return httpx.Response(404, json={"error": f"no route {request.method} {path}"})

    def paths(self, kind: str) -> list[str]:
        return [p for _, p, _ in self.requests if kind in p]

    def committed(self) -> dict[str, bytes]:
        """The files of the commit request (NDJSON: a header line, then one line per file, content in base64)."""
        body = next(b for _, p, b in self.requests if "/commit/" in p)
        lines = [json.loads(line) for line in body.decode().splitlines()]
        assert lines[0]["key"] == "header"
        return {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}


@pytest.fixture
def fake_hub(monkeypatch):
    httpx = pytest.importorskip("httpx2")
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub = FakeHub()
    hooks = {"request": [_http.hf_request_event_hook]}  # huggingface_hub's own request hook stays
    huggingface_hub.set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(hub), event_hooks=hooks))
    yield hub
    huggingface_hub.set_client_factory(_http.default_client_factory)


def test_push_uploads_the_model_files_only(tmp_path, fake_hub):
    run = tmp_path / "run"
    shutil.copytree(MODEL, run / "best")
    (run / "best" / "training_state.json").write_text("{}")  # not part of a model: stays home
    (run / "best" / "README.md").write_text("---\nlibrary_name: mmgen\n---\n# a card\n")
    code = main(["push", str(run / "best"), "someone/tiny-scenes", "--private", "--revision", "v2", "--token", "hf_x"])
    assert code == 0
    create = json.loads(next(b for _, p, b in fake_hub.requests if p == "/api/repos/create"))
    assert create == {**create, "name": "tiny-scenes", "organization": "someone"}
    assert create.get("private") is True or create.get("visibility") == "private"
    assert fake_hub.paths("/branch/") == ["/api/models/someone/tiny-scenes/branch/v2"]
    assert fake_hub.paths("/validate-yaml")  # the card's header was checked before the commit
    assert fake_hub.paths("/commit/") == ["/api/models/someone/tiny-scenes/commit/v2"]
    files = fake_hub.committed()
    local = {str(f.relative_to(MODEL)) for f in MODEL.rglob("*") if f.is_file()} - {"complete.json"}
    assert set(files) == local | {"README.md"}
    for name, data in files.items():
        assert data == (run / "best" / name).read_bytes(), name


def test_push_to_hub_from_python_writes_a_card(tmp_path, fake_hub):
    captioner = Captioner.from_pretrained(MODEL, device="cpu")
    url = captioner.push_to_hub("someone/tiny", commit_message="first", token="hf_x")
    assert url.startswith("https://huggingface.co/")
    header = json.loads(next(b for _, p, b in fake_hub.requests if "/commit/" in p).decode().splitlines()[0])
    assert header["value"]["summary"] == "first"
    files = fake_hub.committed()
    card = files["README.md"].decode()
    assert card.startswith("---\n") and "library_name: mmgen" in card and "# tiny" in card
    assert json.loads(files["config.json"])["generation"]["num_beams"] == captioner.generation.num_beams
    assert not fake_hub.paths("/branch/")  # main: no branch to create
