"""The Hugging Face Hub: saved models by repo id (``owner/name``), downloaded and uploaded with ``huggingface_hub``.

>>> CaptionModel.from_pretrained("owner/tiny-scenes", revision="v1")   # or Captioner.from_pretrained(...)
>>> model.push_to_hub("owner/tiny-scenes", private=True)                 # or `mmgen push RUN/best owner/name`

A name that is an existing local directory is that directory; any other name is a repo id, fetched with
``huggingface_hub.snapshot_download``: only the files a model needs (:data:`MODEL_FILES`), into the Hugging Face
cache (``HF_HUB_CACHE`` / ``HF_HOME``, or ``cache_dir``), answered from the cache when ``HF_HUB_OFFLINE=1`` or the
Hub cannot be reached. Uploads go through ``HfApi.create_repo`` and ``HfApi.create_commit``, with the same files.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from mmgen.errors import MissingCheckpointFileError

MODEL_FILES = (
    "config.json",
    "decoder_config.json",
    "model.safetensors",
    "tokenizer/*",
    "README.md",
    "metrics.json",
)
"""What a saved model is made of (glob patterns relative to its folder): downloaded and uploaded, nothing else
(checkpoints' optimizer state and the rest of a run directory stay home)."""


def looks_like_repo_id(name: str) -> bool:
    """``name`` or ``owner/name`` made of the characters the Hub allows (not a path that merely does not exist)."""
    parts = name.split("/")
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
    return (
        1 <= len(parts) <= 2
        and all(parts)
        and all(set(p) <= allowed and not p.startswith((".", "-")) and ".." not in p for p in parts)
    )


def model_files(folder: str | os.PathLike) -> list[str]:
    """The files of a model folder that :data:`MODEL_FILES` names (relative POSIX paths, sorted)."""
    root = Path(folder)
    found = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return sorted(f for f in found if any(fnmatch.fnmatch(f, pattern) for pattern in MODEL_FILES))


def resolve_model_dir(
    name: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
) -> Path:
    """The local folder of a saved model: ``name`` itself when it is a directory, else the Hub snapshot of the repo
    ``name`` at ``revision`` (a branch, tag or commit; default ``main``).

    Raises:
        mmgen.errors.MissingCheckpointFileError: No such directory, and no such repo (or revision) on the Hub or in
            its cache; the message says which, and how to get it.
    """
    path = Path(name)
    if path.is_dir() or not looks_like_repo_id(str(name)):
        if not path.is_dir():
            raise MissingCheckpointFileError(f"{path}: no such model directory")
        if revision is not None:
            raise ValueError(f"revision={revision!r} names a Hub revision; {path} is a local directory")
        return path
    return _download(str(name), revision, cache_dir, token)


def _download(repo_id: str, revision: str | None, cache_dir, token) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f" at revision {revision!r}" if revision else ""
    try:
        folder = snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, token=token, allow_patterns=list(MODEL_FILES)
        )
    except RevisionNotFoundError:
        raise MissingCheckpointFileError(f"{repo_id}: the Hub repo has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise MissingCheckpointFileError(
            f"{repo_id}: no such local directory, and no such model on the Hub (or it is private: pass token= or "
            "run `hf auth login`)"
        ) from None
    except LocalEntryNotFoundError:
        raise MissingCheckpointFileError(
            f"{repo_id}: no such local directory, and the Hub repo{at} is not in the Hugging Face cache while the Hub "
            "cannot be reached (HF_HUB_OFFLINE=1, or no network): download it once online, or give a local folder"
        ) from None
    except HfHubHTTPError as e:
        raise MissingCheckpointFileError(f"{repo_id}: the Hub refused the download{at} ({e})") from None
    return Path(folder)


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | bool | None = None,
    create_pr: bool = False,
) -> str:
    """Upload the model files of ``folder`` (:data:`MODEL_FILES`) to the Hub model repo ``repo_id`` in one commit.

    The repo is created when it does not exist (``private`` applies then), and so is the branch ``revision``.

    Args:
        folder: A saved model folder (``save_pretrained``, a run's ``best/`` or ``final/``).
        repo_id: ``owner/name`` (or ``name``, under the token's user).
        private: Create the repo private (None: the Hub's default, public).
        revision: The branch to commit to (default: ``main``).
        commit_message: The commit's message (default: "Upload mmgen model").
        token: A Hub token (default: the one ``hf auth login`` saved, or ``HF_TOKEN``).
        create_pr: Open a pull request instead of committing to the branch.

    Returns:
        The URL of the commit (or of the pull request).

    Raises:
        mmgen.errors.MissingCheckpointFileError: ``folder`` holds no model (no ``config.json``).
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    root = Path(folder)
    files = model_files(root) if root.is_dir() else []
    if "config.json" not in files or "model.safetensors" not in files:
        raise MissingCheckpointFileError(f"{root}: not a saved model (config.json and model.safetensors are needed)")
    api = HfApi(token=token)
    repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision is not None and not create_pr:
        api.create_branch(repo.repo_id, branch=revision, exist_ok=True)
    operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(root / f)) for f in files]
    info = api.create_commit(
        repo.repo_id,
        operations,
        commit_message=commit_message or "Upload mmgen model",
        revision=revision,
        create_pr=create_pr,
    )
    return info.pr_url or info.commit_url


def push_model(model, repo_id: str, *, generation=None, **options) -> str:
    """Save ``model`` (a ``CaptionModel``, with its card; ``generation``: the settings saved with it, default its
    own) into a temporary folder and :func:`push_folder` it; ``options``: ``private``, ``revision``,
    ``commit_message``, ``token``, ``create_pr``. Returns the commit's URL."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mmgen-push-") as tmp:
        folder = Path(tmp) / repo_id.split("/")[-1]  # a new card is named after the folder: the repo's name
        model.save_pretrained(folder, generation=generation)
        return push_folder(folder, repo_id, **options)
