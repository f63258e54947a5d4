"""A JSON + safetensors codec for training state: nothing is pickled.

:func:`encode_tree` turns a nested state (optimizer and scheduler state dicts, RNG states, the
trainer's counters) into a JSON tree, moving every tensor into a flat ``{name: tensor}`` dict for
one safetensors file; :func:`decode_tree` gives back the same types. Tuples, dicts with non-string
keys (the optimizer's parameter indices) and numpy arrays are tagged so that ``load_state_dict`` /
``setstate`` receive what they expect.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

_MARKERS = ("__tensor__", "__tuple__", "__map__", "__ndarray__")


def encode_tree(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON tree for ``obj``; tensors go to ``tensors`` under a dotted key and are referenced by it.

    Tuples, dicts with non-string keys (the optimizer's parameter indices) and numpy arrays are tagged
    so that :func:`decode_tree` gives back the same types ``load_state_dict`` / ``setstate`` expect.
    """
    if isinstance(obj, torch.Tensor):
        name = key if key not in tensors else f"{key}#{len(tensors)}"
        tensors[name] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_tree(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode_tree(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and k not in _MARKERS for k in obj):
            return {k: encode_tree(v, f"{key}.{k}", tensors) for k, v in obj.items()}
        return {
            "__map__": [
                [encode_tree(k, f"{key}.k{i}", tensors), encode_tree(v, f"{key}.{k}", tensors)]
                for i, (k, v) in enumerate(obj.items())
            ]
        }
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(
        f"{key}: a {type(obj).__name__} cannot be stored in a checkpoint "
        "(JSON values, tuples, lists, dicts, numpy arrays and tensors can)"
    )


def decode_tree(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The object :func:`encode_tree` encoded as ``tree``, its tensors looked up in ``tensors``."""
    if isinstance(tree, list):
        return [decode_tree(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if "__tuple__" in tree:
        return tuple(decode_tree(v, tensors) for v in tree["__tuple__"])
    if "__map__" in tree:
        return {decode_tree(k, tensors): decode_tree(v, tensors) for k, v in tree["__map__"]}
    if "__ndarray__" in tree:
        return np.array(tree["__ndarray__"], dtype=np.dtype(tree["dtype"]))
    return {k: decode_tree(v, tensors) for k, v in tree.items()}


def unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors, with copies of those that share memory (views of one buffer): safetensors refuses them."""
    seen: set[int] = set()
    out = {}
    for k, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        out[k] = t.clone() if ptr in seen and t.numel() else t
        seen.add(ptr)
    return out


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN / infinite float (also a 0-d numpy value or tensor) replaced by None.

    Strict JSON has no NaN or Infinity: ``json.dumps(json_safe(obj), allow_nan=False)`` writes them as ``null``,
    which every JSON reader accepts.
    """
    if isinstance(obj, (np.generic, torch.Tensor)) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def json_scalar(obj: Any) -> Any:
    """``json.dumps`` default: 0-d numpy values and tensors as Python scalars."""
    if isinstance(obj, (np.generic, torch.Tensor)) and getattr(obj, "ndim", 0) == 0:
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
