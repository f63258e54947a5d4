"""Reading COCO caption files: annotation files into references, result files into candidates."""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping
from os import PathLike
from typing import Any

__all__ = ["check_captions", "load_coco_references", "load_coco_results", "results_to_candidates"]


def _load_json(source: str | PathLike[str] | Any) -> Any:
    """The parsed file (UTF-8, a byte-order mark allowed), or ``source`` itself when it is parsed already.

    Raises:
        ValueError: The file is not JSON (cut short, not UTF-8, nested too deeply); the message names it.
    """
    if not isinstance(source, (str, PathLike)):
        return source
    try:
        with open(source, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno}; cut short?)") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise ValueError(f"{source}: not valid JSON (nested too deeply)") from None


def _named(source: Any) -> str:
    """How a message names the file (nothing for data passed in parsed)."""
    return f"{source}: " if isinstance(source, (str, PathLike)) else ""


def _image_id(value: Any, where: str) -> Hashable:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{where}: image_id must be an integer or a string, got {value!r:.80}")
    return value


def load_coco_references(source: str | PathLike[str] | Mapping[str, Any]) -> dict[Hashable, list[str]]:
    """Reference captions from a COCO annotation file (``images`` + ``annotations``).

    Images come in the order of ``images`` (the order pycocoevalcap evaluates them in), each with its
    captions in file order; images without any caption are left out.

    Args:
        source: Path to the JSON file, or its parsed content.

    Raises:
        ValueError: The file is not a COCO caption file or a caption is not a string (the message
            names the annotation).
    """
    data, named = _load_json(source), _named(source)
    if not isinstance(data, Mapping) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{named}not a COCO caption annotation file: expected an object with an 'annotations' list")
    images = data.get("images", [])
    if not isinstance(images, list):
        raise ValueError(f"{named}'images' must be a list")
    refs: dict[Hashable, list[str]] = {}
    for index, img in enumerate(images):
        if isinstance(img, Mapping) and "id" in img:
            refs[_image_id(img["id"], f"{named}images[{index}].id")] = []
    for index, ann in enumerate(data["annotations"]):
        if not isinstance(ann, Mapping) or "image_id" not in ann or "caption" not in ann:
            raise ValueError(f"{named}annotation {index} lacks 'image_id' or 'caption'")
        caption = ann["caption"]
        image_id = _image_id(ann["image_id"], f"{named}annotation {index}")
        if not isinstance(caption, str):
            raise ValueError(
                f"{named}annotation {index} (id {ann.get('id')}, image_id {image_id!r}) has a caption of type "
                f"{type(caption).__name__}, expected a string"
            )
        refs.setdefault(image_id, []).append(caption)
    return {image_id: caps for image_id, caps in refs.items() if caps}


def results_to_candidates(results: Iterable[Mapping[str, Any]], named: str = "") -> dict[Hashable, str]:
    """Candidates from COCO results entries ``{"image_id": ..., "caption": ...}`` (``named``: the file, for
    messages).

    Raises:
        ValueError: An entry lacks a key, has an image id that is not an integer or a string, a non-string
            caption, or repeats an image id (the message names the entries).
    """
    candidates: dict[Hashable, str] = {}
    first_index: dict[Hashable, int] = {}
    for index, entry in enumerate(results):
        if not isinstance(entry, Mapping) or "image_id" not in entry or "caption" not in entry:
            raise ValueError(f"{named}result {index} is not an object with 'image_id' and 'caption'")
        image_id, caption = _image_id(entry["image_id"], f"{named}result {index}"), entry["caption"]
        if not isinstance(caption, str):
            raise ValueError(
                f"{named}result {index} (image_id {image_id!r}) has a caption of type {type(caption).__name__}, "
                "expected a string"
            )
        if image_id in candidates:
            raise ValueError(
                f"{named}duplicate results for image_id {image_id!r} (entries {first_index[image_id]} and {index}); "
                "give one caption per image"
            )
        candidates[image_id] = caption
        first_index[image_id] = index
    return candidates


def load_coco_results(source: str | PathLike[str] | list[Mapping[str, Any]]) -> dict[Hashable, str]:
    """Candidates from a COCO results file (a JSON list of ``{"image_id", "caption"}``).

    Raises:
        ValueError: See :func:`results_to_candidates`; also when the file is not a list.
    """
    data, named = _load_json(source), _named(source)
    if not isinstance(data, list):
        raise ValueError(f"{named}not a COCO results file: expected a JSON list of {{'image_id', 'caption'}} objects")
    return results_to_candidates(data, named)


def check_captions(
    references: Mapping[Hashable, Any], candidates: Mapping[Hashable, Any], max_named: int = 5
) -> list[Hashable]:
    """Validate references and candidates for scoring; return the ids of empty candidate captions.

    Raises:
        ValueError: Ids differ between the two (naming a few missing and extra ids), an image has no
            references, or a caption is not a string.
    """
    missing = [i for i in references if i not in candidates]
    extra = [i for i in candidates if i not in references]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} reference image(s) have no result, e.g. {_few(missing, max_named)}")
        if extra:
            parts.append(f"{len(extra)} result image id(s) are not in the references, e.g. {_few(extra, max_named)}")
        raise ValueError("results and references do not cover the same images: " + "; ".join(parts))
    for image_id, refs in references.items():
        if isinstance(refs, str) or not refs:
            raise ValueError(f"image {image_id!r}: references must be a non-empty list of strings")
        for k, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise ValueError(f"image {image_id!r}: reference {k} is {type(ref).__name__}, expected a string")
    empty = []
    for image_id, caption in candidates.items():
        if not isinstance(caption, str):
            raise ValueError(f"image {image_id!r}: candidate caption is {type(caption).__name__}, expected a string")
        if not caption.strip():
            empty.append(image_id)
    return empty


def _few(ids: list[Hashable], k: int) -> str:
    shown = ", ".join(repr(i) for i in ids[:k])
    return shown + (", ..." if len(ids) > k else "")
