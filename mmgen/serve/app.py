"""The HTTP API of ``mmgen serve`` (FastAPI): ``POST /v1/caption``, ``GET /v1/model``, ``GET /health``,
``GET /metrics`` (Prometheus), the upload page at ``/``.

``POST /v1/caption`` takes either a multipart form (field ``image``: the file; other fields: options)
or a JSON object (``image``: base64 of the file, or a ``data:`` URL; other keys: options). Options
(:data:`OPTIONS`, the one table they are read, checked and described from): ``beams``,
``max_new_tokens``, ``num_return_sequences``, ``prompt`` and ``bad_words`` (a list, or comma-separated in
a form). The answer is ``{"caption", "captions", "scores", "truncated", "batch_size",
"queued_ms"}`` (``truncated``: per caption, whether it stopped at ``max_new_tokens``). Several images in one request
(JSON ``images``: a list of base64 strings; a form: several ``image`` fields, or fields named ``images``) are
answered in order as ``{"results": [answer, ...]}``, each image batched like a request of its own. Errors are
``{"error": message}`` with 400 (malformed request), 413 (body or image
too large), 415 (another content type), 422 (an image that cannot be decoded, a bad option) or 429
(the queue is full; ``Retry-After`` says when to try again); 500 when the search itself failed (the reason
is logged, the server keeps serving) and 503 when the captioning worker is not running (``/health`` says
so too). The interactive docs pages are left out (they load scripts from a CDN); the schema is at
``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from mmgen.serve import ServeSettings
from mmgen.serve.batcher import Batcher, Generate, Job, QueueFull
from mmgen.serve.page import PAGE

logger = logging.getLogger("mmgen.serve")


class ApiError(Exception):
    """A request the API refuses: becomes ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


@dataclass(frozen=True)
class Option:
    """An option a request may set."""

    schema: dict
    """Its JSON schema: 'integer' (from ``minimum`` up to the limit), 'string' (up to ``maxLength``), or 'array' of
    strings (comma-separated text in a form)."""
    field: str | None = None
    """The generation setting it sets (a ``GenerationConfig`` field); None: not a generation setting."""
    limit: str | None = None
    """The :class:`ServeSettings` attribute that bounds an integer from above."""


OPTIONS = {
    "beams": Option(
        {"type": "integer", "minimum": 1, "description": "beam size (1: greedy)"}, field="num_beams", limit="max_beams"
    ),
    "max_new_tokens": Option(
        {"type": "integer", "minimum": 1, "description": "caption length limit in tokens"},
        field="max_new_tokens",
        limit="max_new_tokens",
    ),
    "num_return_sequences": Option(
        {"type": "integer", "minimum": 1, "description": "captions returned, best first"},
        field="num_return_sequences",
        limit="max_beams",
    ),
    "prompt": Option(
        {"type": "string", "maxLength": 500, "description": "text the caption continues (default: the model's prompt)"}
    ),
    "bad_words": Option(
        {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "pattern": r"\S"},  # blank words are refused
            "description": "words never generated",
        },
        field="bad_words",
    ),
}
"""The options of ``POST /v1/caption`` by name: their schema, parsing and checks all follow from this table."""
_OPTION_SCHEMA = {name: option.schema for name, option in OPTIONS.items()}
_LISTS = [name for name, option in OPTIONS.items() if option.schema["type"] == "array"]  # comma-separated in a form
_REQUEST_SCHEMA = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string", "format": "binary"},
                    "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    **{k: ({"type": "string"} if k in _LISTS else v) for k, v in _OPTION_SCHEMA.items()},
                },
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "anyOf": [{"required": ["image"]}, {"required": ["images"]}],
                "properties": {  # an option given as null takes its default
                    "image": {"type": "string", "format": "byte", "minLength": 1},
                    "images": {"type": "array", "items": {"type": "string", "format": "byte", "minLength": 1}},
                    **{k: {**v, "type": [v["type"], "null"]} for k, v in _OPTION_SCHEMA.items()},
                },
            }
        },
    },
}
_RESPONSE_SCHEMA = {
    "type": "object",
    "properties": {
        "caption": {"type": "string"},
        "captions": {"type": "array", "items": {"type": "string"}},
        "scores": {"type": "array", "items": {"type": "number"}},
        "truncated": {"type": "array", "items": {"type": "boolean"}, "description": "stopped at max_new_tokens"},
        "batch_size": {"type": "integer", "description": "images in the batched search this one ran in"},
        "queued_ms": {"type": "number"},
    },
}
_RESPONSE_SCHEMA["properties"]["results"] = {  # several images: one answer each, in order
    "type": "array",
    "items": {"type": "object", "properties": dict(_RESPONSE_SCHEMA["properties"])},
}
_ERROR = {"content": {"application/json": {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it is known to exceed ``limit`` bytes (declared or streamed); a client
    that leaves before sending all of it is logged in one line."""
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {int(declared)} bytes is over the limit of {limit} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        logger.info("%s: the client disconnected after %d bytes of its request body", _client(request), size)
        raise ApiError(400, "the client disconnected before sending the whole request body") from None
    return b"".join(chunks)


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "a client"


def _boundary(content_type: str) -> bytes | None:
    """The ``boundary`` parameter of a multipart content type, as bytes (None when there is none)."""
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary" and value.strip():
            return value.strip().strip('"').encode("latin-1", "replace")
    return None


async def _parse_form(request: Request, body: bytes, max_images: int = 1) -> tuple[list[tuple[bytes, str]], dict, bool]:
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    boundary = _boundary(request.headers.get("content-type", ""))
    if boundary is not None and b"--" + boundary + b"--" not in body:
        raise ApiError(
            400, f"malformed multipart form: the body ends before its closing boundary ({len(body)} bytes): cut short?"
        )

    try:
        form = await Request(request.scope, replay).form(max_files=max_images, max_fields=len(OPTIONS) + max_images)
    except Exception as e:  # noqa: BLE001 - multipart errors come in several kinds
        raise ApiError(400, f"malformed multipart form ({e})") from None
    uploads = [(k, v) for k, v in form.multi_items() if k in _IMAGE_FIELDS]
    if not uploads or not all(isinstance(v, UploadFile) for _, v in uploads):
        raise ApiError(422, "the form needs a file field 'image' (or several: 'image' or 'images')")
    images = [(await v.read(), v.filename or "upload") for _, v in uploads]
    options = {k: v for k, v in form.multi_items() if k not in _IMAGE_FIELDS}
    for name in _LISTS:
        if isinstance(options.get(name), str):
            options[name] = [w.strip() for w in options[name].split(",") if w.strip()]
    return images, options, len(images) > 1 or any(k == "images" for k, _ in uploads)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is out of range")
    return value


_IMAGE_FIELDS = ("image", "images")


def _parse_json(body: bytes) -> tuple[list[tuple[bytes, str]], dict, bool]:
    try:  # strict JSON: no NaN / Infinity, no number beyond a float's range
        payload = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ApiError(400, "invalid JSON (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, an integer of too many digits, ...
        raise ApiError(400, f"invalid JSON ({' '.join(str(e).split())[:200]})") from None
    many = isinstance(payload, dict) and isinstance(payload.get("images"), list) and "image" not in payload
    if many and payload["images"] and all(isinstance(x, str) for x in payload["images"]):
        texts = [(x, f"images[{i}]") for i, x in enumerate(payload.pop("images"))]
    elif not many and isinstance(payload, dict) and isinstance(payload.get("image"), str):
        texts = [(payload.pop("image"), "image")]
    else:
        raise ApiError(
            422, "the JSON body must be an object with 'image': the base64 of an image file (or 'images': a list)"
        )
    return [(_base64(text, name), name) for text, name in texts], payload, many


def _base64(text: str, name: str) -> bytes:
    if text.startswith("data:") and "," in text:  # a data URL: data:image/png;base64,....
        text = text.split(",", 1)[1]
    try:  # line breaks are legal in MIME base64 (the base64 tool wraps at 76 columns)
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, f"'{name}' is not valid base64") from None


def _checked(name: str, value: Any, option: Option, settings: ServeSettings) -> Any:
    """An option's value as its setting takes it (a form's text read as an integer, a list as a tuple); 422
    naming the option when it does not fit its schema."""
    schema = option.schema
    if schema["type"] == "integer":
        return _as_int(name, value, schema["minimum"], getattr(settings, option.limit))
    if schema["type"] == "string":
        if not isinstance(value, str) or len(value) > schema["maxLength"]:
            raise ApiError(422, f"{name}: expected a string of at most {schema['maxLength']} characters")
        return value
    if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
        raise ApiError(422, f"{name}: expected a list of strings, got {value!r}")
    return tuple(value)


def _as_int(key: str, value: Any, low: int, high: int) -> int:
    try:
        number = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError, OverflowError):  # OverflowError: an infinite float
        number = None
    if number is None or str(number) != str(value).strip():
        raise ApiError(422, f"{key}: expected an integer, got {value!r}")
    if not low <= number <= high:
        raise ApiError(422, f"{key}: must be between {low} and {high}, got {number}")
    return number


def parse_options(
    options: dict[str, Any], captioner, settings: ServeSettings, cache: dict | None = None
) -> tuple[Any, str | None]:
    """The generation settings and prompt a request asks for (422 naming the option when one is wrong).

    ``cache``: settings already resolved, by the captioner's defaults and the options asked (most requests ask
    the same few), so that a request does not build and validate them again; up to 1024 entries are kept.
    """
    from mmgen.config import ConfigError

    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ApiError(422, f"unknown option(s) {unknown}; valid: {list(OPTIONS)}")
    overrides: dict[str, Any] = {"num_return_sequences": 1}  # one caption, unless asked for more
    checked = {}  # the generation settings first, then the others
    for name, option in sorted(OPTIONS.items(), key=lambda item: item[1].field is None):
        if options.get(name) is not None:
            checked[name] = _checked(name, options[name], option, settings)
            if option.field is not None:
                overrides[option.field] = checked[name]
    prompt = checked.get("prompt")
    base, key = captioner.generation, tuple(sorted(overrides.items()))
    if cache is not None and cache.get(key, (None,))[0] is base:  # resolved from these very defaults
        gen = cache[key][1]
    else:
        try:  # the limits bound what a request asks for; the model's own defaults stand as saved
            gen = captioner.resolve_generation(**overrides)
        except (ConfigError, ValueError) as e:
            raise ApiError(422, str(e)) from None
        if cache is not None and (key in cache or len(cache) < 1024):
            cache[key] = (base, gen)
    try:  # image tokens + prompt + max_new_tokens must fit the decoder's positions
        captioner.model.check_generation(gen, prompt, key="max_new_tokens")
    except ConfigError as e:
        raise ApiError(422, str(e)) from None
    return gen, prompt


def _preprocess(captioner, data: bytes, name: str, max_pixels: int):
    """Decode (safely) and transform one uploaded image; 413 / 422 with the decoder's reason."""
    from mmgen.data.images import BadImageError, decode_image

    try:
        return captioner.transform(decode_image(data, max_pixels=max_pixels, name=name))
    except BadImageError as e:
        raise ApiError(413 if e.too_large else 422, str(e)) from None


def create_app(captioner, settings: ServeSettings | None = None, generate: Generate | None = None) -> FastAPI:
    """The ASGI app serving ``captioner``; its batching worker runs while the app's lifespan does.

    ``generate``: what captions a batch (default: the captioner's model, ``captioner.model.generate``); a
    stand-in measures or tests everything around the search.
    """
    from mmgen.serve import prometheus_metrics as prometheus

    settings = settings or ServeSettings()
    measured, generate = prometheus.measure(generate or captioner.model.generate)  # /metrics
    batcher = Batcher(generate, settings.max_batch, settings.max_wait_ms / 1000, settings.max_queue)
    if measured is not None:
        measured.queue.set_function(lambda: batcher.queued)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title="mmgen captioning", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher, app.state.settings = batcher, settings
    prometheus.add_metrics(app, measured, ("/v1/caption", "/v1/model", "/health", "/metrics", "/"))
    model_facts = describe_model(captioner, settings)
    resolved: dict = {}  # generation settings by the options asked (see parse_options)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/v1/model")
    async def model() -> dict:
        """Which model answers: its name, what it was trained on, its size and scores, its generation defaults, and
        its model card (Markdown) in ``card``."""
        return model_facts

    @app.get("/health")
    async def health() -> JSONResponse:
        """Liveness and load: 'ok' while the captioning worker runs (else 'error', 503, and why), the model,
        queued requests, batches and images so far, failed batches and the last failure."""
        return _health(batcher, settings)

    responses = {
        200: {"content": {"application/json": {"schema": _RESPONSE_SCHEMA}}},
        **{code: {"description": text, **_ERROR} for code, text in _STATUS.items()},
    }

    @app.post("/v1/caption", openapi_extra={"requestBody": _REQUEST_SCHEMA}, responses=responses)
    async def caption(request: Request) -> dict:
        """Caption one image (multipart field ``image``, or JSON ``{"image": base64}``), batched with others; several
        (``images``, or several ``image`` fields) are answered in order as ``{"results": [...]}``."""
        body = await read_body(request, settings.max_body_bytes)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            images, options, many = await _parse_form(request, body, settings.max_images)
        elif kind == "application/json":
            images, options, many = _parse_json(body)
        else:
            raise ApiError(415, f"send multipart/form-data or application/json, not {kind or 'no content type'!r}")
        if len(images) > settings.max_images:
            raise ApiError(413, f"{len(images)} images in one request; the limit is {settings.max_images}")
        gen, prompt = parse_options(options, captioner, settings, resolved)
        pixels = [await run_in_threadpool(_preprocess, captioner, d, n, settings.max_pixels) for d, n in images]
        answers = await _caption_all(request, batcher, pixels, gen, prompt)
        return {"results": answers} if many else answers[0]

    return app


def _health(batcher: Batcher, settings: ServeSettings) -> JSONResponse:
    worker = batcher.state
    body = {
        "status": "ok" if worker == "running" else "error",
        "worker": worker,
        "model": settings.model_name,
        "queued": batcher.queued,
        "max_queue": batcher.max_queue,
        "batches": batcher.batches,
        "images": batcher.images,
        "failed_batches": batcher.failed_batches,
        "last_error": batcher.last_error,
    }
    return JSONResponse(body, status_code=200 if worker == "running" else 503)


async def _result(request: Request, future) -> Any:
    """The result of a queued job; when the client leaves first, the job is cancelled (never computed unless its
    batch has started) and that is logged in one line. A failed search is 500 naming the error."""
    waiter = asyncio.wrap_future(future)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not waiter.done():
        dropped = future.cancel()  # False once its batch runs: then its result is simply not sent
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())  # a late failure is not "unretrieved"
        logger.info("%s: the client disconnected while waiting%s", _client(request), "" if dropped else " (computed)")
        raise ApiError(400, "the client disconnected before its caption was ready")
    try:
        return waiter.result()
    except Exception as e:  # noqa: BLE001 - the search failed: logged by the batcher with its reason
        raise ApiError(500, f"captioning failed: {' '.join(f'{type(e).__name__}: {e}'.split())[:500]}") from None


async def _disconnect(request: Request) -> None:
    """Return when the client disconnects (the request's body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)  # a server that answers with empty body messages is polled, not spun on


async def _caption_all(request: Request, batcher: Batcher, pixels: list, gen, prompt: str | None) -> list[dict]:
    """Queue one job per image (all or none: 429 when the queue cannot take them all, 503 when the worker is not
    running) and wait for the answers, in order; when one fails (or the client leaves), the others are dropped."""
    futures = []
    try:
        for p in pixels:
            futures.append(batcher.submit(Job(p, gen, prompt)))
        return [_answer(await _result(request, f)) for f in futures]
    except QueueFull as e:
        raise ApiError(429, str(e), headers={"Retry-After": "1"}) from None
    except RuntimeError as e:  # the worker is not running
        raise ApiError(503, str(e)) from None
    finally:
        for f in futures:  # nothing left queued for a request that has its answer (or its error)
            f.cancel()


def _answer(result) -> dict:
    return {
        "caption": result.captions[0],
        "captions": result.captions,
        "scores": result.scores,
        "truncated": result.truncated,
        "batch_size": result.batch_size,
        "queued_ms": round(result.queued_ms, 3),
    }


def describe_model(captioner, settings: ServeSettings) -> dict:
    """What ``GET /v1/model`` answers: the key facts of the model card (:func:`mmgen.model_card.card_facts`), where
    the model was loaded from, its generation defaults, device and quantisation, and the card itself."""
    from pathlib import Path

    from mmgen.config import to_dict
    from mmgen.model_card import card_facts

    card = captioner.model.card
    facts = card_facts(card)
    facts["name"] = facts["name"] or Path(settings.model_name).name or "model"
    facts["source"] = settings.model_name
    facts["parameters"] = facts["parameters"] or sum(p.numel() for p in captioner.model.parameters())
    facts["generation"] = to_dict(captioner.generation)
    facts["device"] = str(captioner.device)
    facts["quantized"] = getattr(captioner.model, "quantized", None)
    facts["card"] = card or ""
    return facts


_STATUS = {
    400: "malformed request",
    413: "request body or image too large, or too many images",
    415: "unsupported content type",
    422: "an image that cannot be decoded, or a bad option",
    429: "queue full, retry later",
    500: "the search failed (the reason is logged; the server keeps serving)",
    503: "the captioning worker is not running (see /health)",
}
