"""Reading the files of a saved model: every failure names the file and what is wrong with it.

A model directory (``CaptionModel.save_pretrained``, a checkpoint, ``best/``, ``final/``) holds
``config.json``, ``decoder_config.json``, ``model.safetensors`` and ``tokenizer/``. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from mmgen.errors import CheckpointError, MissingCheckpointFileError

CONFIG_NAME = "config.json"
DECODER_CONFIG_NAME = "decoder_config.json"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILE = "tokenizer.json"
# torch.save writes a zip archive (PK..) or, in its legacy format, a pickle (protocol 2+ starts with 0x80)
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")


def read_json(file: Path, what: str) -> dict:
    """The JSON object in ``file``.

    Args:
        file: The file.
        what: What the file is, for the message when it is missing (``"the model config"``).

    Raises:
        MissingCheckpointFileError: The file does not exist.
        CheckpointError: It is not a JSON object.
    """
    if not file.is_file():
        raise MissingCheckpointFileError(f"{file}: missing ({what})")
    try:
        data = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object, found a {type(data).__name__}")
    return data


def _readable_safetensors(file: Path) -> None:
    """Raise a clear error for a missing file or a pickled one wearing a ``.safetensors`` name."""
    if not file.is_file():
        raise MissingCheckpointFileError(f"{file}: missing (the weights)")
    with open(file, "rb") as f:
        head = f.read(4)
    if head.startswith(_PICKLE_MAGIC):
        raise CheckpointError(
            f"{file}: a pickled PyTorch file (torch.save), not safetensors; mmgen never unpickles: convert it where "
            "its origin is trusted (safetensors.torch.save_file(torch.load(...), ...))"
        )


def one_line(e: BaseException) -> str:
    """An exception's message on one line (some libraries' messages span several, or hold terminal colours)."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split())


def _corrupt(file: Path, e: Exception) -> CheckpointError:
    return CheckpointError(f"{file}: not a readable safetensors file, corrupt or truncated ({one_line(e)})")


def load_tensors(file: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, on the CPU.

    Raises:
        MissingCheckpointFileError: The file does not exist.
        CheckpointError: It is pickled, corrupt or truncated.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _readable_safetensors(file)
    try:
        return load_file(str(file))
    except SafetensorError as e:
        raise _corrupt(file, e) from e


def load_weights(model: nn.Module, file: Path) -> None:
    """Load a safetensors file into ``model``: every tensor present, no extra one, the same shapes.

    Raises:
        MissingCheckpointFileError: The file does not exist.
        CheckpointError: It is pickled, corrupt or truncated, or its tensors do not fit the model.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    _readable_safetensors(file)
    try:
        missing, unexpected = load_model(model, str(file), strict=False)
    except SafetensorError as e:
        raise _corrupt(file, e) from e
    except RuntimeError as e:  # load_state_dict: a shape differs
        raise CheckpointError(f"{file}: the weights do not fit the model its config describes ({one_line(e)})") from e
    if missing or unexpected:
        missing, unexpected = sorted(missing), sorted(unexpected)
        raise CheckpointError(
            f"{file}: the weights do not fit the model its config describes: {len(missing)} tensor(s) missing "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}"
        )


def load_saved_tokenizer(model_dir: Path):
    """The tokenizer saved in ``model_dir/tokenizer/``, read locally (never looked up on the hub).

    Raises:
        MissingCheckpointFileError: The directory or its ``tokenizer.json`` is absent.
        CheckpointError: The tokenizer files cannot be read.
    """
    from transformers import AutoTokenizer

    tok_dir = model_dir / TOKENIZER_DIR
    if not tok_dir.is_dir():
        raise MissingCheckpointFileError(
            f"{model_dir}: no {TOKENIZER_DIR}/ directory: a saved model keeps its tokenizer there "
            f"({tok_dir / TOKENIZER_FILE}); copy the whole directory written by training or save_pretrained"
        )
    if not (tok_dir / TOKENIZER_FILE).is_file() and not (tok_dir / "tokenizer_config.json").is_file():
        raise MissingCheckpointFileError(f"{tok_dir}: no {TOKENIZER_FILE} (the tokenizer directory is incomplete)")
    try:
        return AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{tok_dir}: the tokenizer cannot be loaded ({one_line(e)})") from e


WEIGHTS_NAME = "model.safetensors"


def read_saved_configs(path: Path):
    """``(ModelConfig, GenerationConfig or None, the decoder's transformers config)`` of a saved model directory.

    Raises:
        MissingCheckpointFileError: The directory or a config file is absent.
        CheckpointError: A config file is not what ``save_pretrained`` writes; the message names it.
    """
    from transformers import AutoConfig

    from mmgen.config import GenerationConfig, ModelConfig, from_dict

    if not path.is_dir():
        raise MissingCheckpointFileError(f"{path}: no such model directory")
    cfg_file = path / CONFIG_NAME
    if not cfg_file.is_file():
        raise MissingCheckpointFileError(f"{path}: not a mmgen model directory (no {CONFIG_NAME})")
    meta = read_json(cfg_file, "the model config")
    try:
        config = from_dict(ModelConfig, meta["model"])
        generation = from_dict(GenerationConfig, meta["generation"]) if "generation" in meta else None
    except KeyError as e:
        raise CheckpointError(f"{cfg_file}: no {e} section; not a config written by save_pretrained") from e
    except (ValueError, TypeError) as e:  # ConfigError names the key
        raise CheckpointError(f"{cfg_file}: {one_line(e)}") from e
    dec_file = path / DECODER_CONFIG_NAME
    hf_cfg_dict = read_json(dec_file, "the decoder's transformers config")
    try:
        hf_cfg = AutoConfig.for_model(**hf_cfg_dict)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{dec_file}: not a transformers model config ({one_line(e)})") from e
    return config, generation, hf_cfg


def load_matching_weights(model: nn.Module, path: str | os.PathLike) -> list[str]:
    """Copy the tensors of a saved model into ``model`` where names and shapes match.

    Used to start stage 2 from stage 1 (LoRA adapters are new; everything else carries over).
    Returns the names of ``model``'s tensors that were not found in the file.
    """
    file = Path(path) / WEIGHTS_NAME
    if not file.exists():
        raise MissingCheckpointFileError(f"train.init_from: no {WEIGHTS_NAME} in {path}")
    saved = load_tensors(file)
    own = model.state_dict()

    # peft wraps the decoder: base weights live under '.base_model.model.' and '.base_layer.'
    def plain(name: str) -> str:
        return name.replace("base_model.model.", "").replace(".base_layer.", ".")

    by_plain = {plain(k): v for k, v in saved.items()}
    missing = []
    loaded: set[int] = set()  # storages written, so tied weights (GPT-2's wte / lm_head) count as loaded
    with torch.no_grad():
        for name, tensor in own.items():
            src = saved.get(name, by_plain.get(plain(name)))
            if src is not None and src.shape == tensor.shape:
                tensor.copy_(src)
                loaded.add(tensor.data_ptr())
            else:
                missing.append(name)
    require_finite_weights(model, file)
    return [name for name in missing if own[name].data_ptr() not in loaded]


def non_finite_tensors(model: nn.Module) -> list[str]:
    """The names of ``model``'s floating-point parameters and buffers that hold a NaN or an infinity (tied
    weights once; a sharded tensor by this process's shard)."""
    named, seen = [], set()
    for n, t in model.state_dict(keep_vars=True).items():
        t = t.to_local() if hasattr(t, "to_local") else t  # FSDP2 DTensor
        if t.is_floating_point() and t.numel() and (t.data_ptr(), t.shape) not in seen:
            seen.add((t.data_ptr(), t.shape))
            named.append((n, t.detach()))
    if not named:
        return []
    flags = [torch.isfinite(t).all() for _, t in named]
    finite = torch.stack([f.to(flags[0].device) for f in flags]).cpu()  # one sync when all share a device
    return [named[i][0] for i in (~finite).nonzero().flatten().tolist()]


def require_finite_weights(model: nn.Module, file: Path) -> None:
    """Refuse a loaded model whose weights hold a NaN or an infinity: it would caption ``""`` for every image.

    Raises:
        CheckpointError: Naming ``file``, how many tensors are affected and a few of them.
    """
    bad = non_finite_tensors(model)
    if bad:
        raise CheckpointError(
            f"{file}: {len(bad)} weight tensor(s) hold NaN or infinite values (e.g. {', '.join(bad[:3])}); "
            "the model cannot caption: load an earlier checkpoint of its run"
        )


def model_fingerprint(path: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of the files of a saved model that decide its captions, by part: ``weights``
    (``model.safetensors``), ``config`` (``config.json`` and ``decoder_config.json``) and ``tokenizer`` (every file
    of ``tokenizer/``). Equal fingerprints: the same model, wherever it lies; new weights at the same path differ.

    Raises:
        MissingCheckpointFileError: A file it hashes is missing.
    """
    path = Path(path)
    tokenizer = path / TOKENIZER_DIR
    parts = {
        "weights": [path / WEIGHTS_NAME],
        "config": [path / CONFIG_NAME, path / DECODER_CONFIG_NAME],
        "tokenizer": sorted(f for f in tokenizer.rglob("*") if f.is_file()) if tokenizer.is_dir() else [],
    }
    out = {}
    for part, files in parts.items():
        digest = hashlib.sha256()
        for file in files:
            if not file.is_file():
                raise MissingCheckpointFileError(f"{file}: missing (the model's {part})")
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
            with open(file, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        out[part] = digest.hexdigest()
    return out


def jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
