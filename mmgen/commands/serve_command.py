"""``mmgen serve --model DIR``: caption images over HTTP with dynamic batching (see :mod:`mmgen.serve`).

Needs the ``serve`` extra (``pip install 'mmgen[serve]'``); without it the command says which packages
are missing and exits with 2.
"""

from __future__ import annotations

import argparse
import sys

from mmgen.commands import (
    UsageError,
    add_device_option,
    add_generation_overrides,
    add_threads_option,
    apply_threads,
    generation_changes,
    load_captioner,
    number_in,
    port_number,
    positive_int,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from mmgen.serve import MAX_WAIT_MS, ServeSettings

    d = ServeSettings()
    p = sub.add_parser(
        "serve",
        help="serve a saved model over HTTP (upload page, JSON API, dynamic batching)",
        description="Serve a captioner: POST /v1/caption, GET /v1/model, GET /health, GET /metrics (Prometheus), an "
        "upload page at /, schema at /openapi.json.",
    )
    p.add_argument("--model", required=True, metavar="DIR", help="saved model directory")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=port_number, default=8000, help="port, 0..65535 (default: 8000)")
    add_device_option(p)
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"), help="weights dtype")
    p.add_argument("--quantize", default=None, choices=("int8",), help="int8: dynamic int8 CPU inference")
    p.add_argument("--max-batch", type=positive_int, default=d.max_batch, help=f"images per search ({d.max_batch})")
    p.add_argument(
        "--max-wait-ms",
        type=number_in(0, MAX_WAIT_MS),
        default=d.max_wait_ms,
        help=f"batch gathering window, 0..{MAX_WAIT_MS:g} ms ({d.max_wait_ms} ms)",
    )
    p.add_argument(
        "--max-queue", type=positive_int, default=d.max_queue, help=f"queued requests before 429 ({d.max_queue})"
    )
    p.add_argument(
        "--max-body-mb",
        type=number_in(0, 2**20, low_open=True),
        default=d.max_body_bytes / 2**20,
        help="request size limit (10 MB)",
    )
    p.add_argument("--max-pixels", type=positive_int, default=d.max_pixels, help=f"image size limit ({d.max_pixels})")
    p.add_argument(
        "--max-beams", type=positive_int, default=d.max_beams, help=f"largest beams a request may ask ({d.max_beams})"
    )
    p.add_argument(
        "--max-new-tokens", type=positive_int, default=d.max_new_tokens, help="largest max_new_tokens a request may ask"
    )
    p.add_argument(
        "--max-images", type=positive_int, default=d.max_images, help=f"images in one request ({d.max_images})"
    )
    add_threads_option(p)
    add_generation_overrides(p)  # the defaults of every request (which may change them within the limits)
    p.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error"), help="info logs every request"
    )
    p.set_defaults(func=run, positionals="overrides")


def run(args: argparse.Namespace) -> int:
    app = build_app(args)
    from mmgen.serve.server import serve

    serve(app, args.host, args.port, args.log_level)
    return 0


def build_app(args: argparse.Namespace, generate=None):
    """The app ``mmgen serve`` runs for these arguments (``generate``: see :func:`mmgen.serve.app.create_app`)."""
    from mmgen.serve import missing_packages

    missing = missing_packages()
    if missing:
        raise UsageError(f"serving needs {', '.join(missing)}: pip install 'mmgen[serve]'")
    from mmgen.serve import ServeSettings
    from mmgen.serve.app import create_app

    apply_threads(args)
    # generation.KEY=VALUE only (--max-new-tokens here is a limit); misspelt keys fail before the model is loaded
    changes = generation_changes(args, {})
    settings = ServeSettings(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_body_bytes=max(int(args.max_body_mb * 2**20), 1),
        max_pixels=args.max_pixels,
        max_beams=args.max_beams,
        max_new_tokens=args.max_new_tokens,
        model_name=str(args.model),
        max_images=args.max_images,
    )
    captioner = load_captioner(args)
    captioner.generation = captioner.resolve_generation(**changes)
    captioner.model.check_generation(captioner.generation)  # every request's defaults must fit the decoder
    print(f"mmgen serve: {args.model} on {captioner.device}, http://{args.host}:{args.port}/", file=sys.stderr)
    return create_app(captioner, settings, generate=generate)
