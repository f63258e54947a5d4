"""Running the app with uvicorn: :func:`serve` in the foreground, :class:`BackgroundServer` on a thread."""

from __future__ import annotations

import copy
import threading
import time

import uvicorn


def serve(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **options) -> None:
    """Serve ``app`` until interrupted (Ctrl-C finishes the queued requests, then stops).

    ``log_level`` "info" logs every request; "warning" only problems. mmgen's own lines (a failed search, a
    client that left) go through uvicorn's log format. ``options``: further ``uvicorn.run`` settings
    (``http="h11", loop="asyncio"``: the pure-Python parser and event loop).
    """
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        log_config=log_config(log_level),
        timeout_graceful_shutdown=10,
        **options,
    )


def log_config(log_level: str = "info") -> dict:
    """uvicorn's logging config, with the ``mmgen`` loggers written by its default handler at ``log_level``."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["mmgen"] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    return config


class BackgroundServer:
    """``app`` served by uvicorn on a daemon thread, for tests and load tests.

    >>> with BackgroundServer(app) as server:
    ...     requests.get(server.url + "/health")

    Args:
        app: An ASGI app.
        host: Interface to listen on (loopback by default).
        port: Port (0: a free one, see :attr:`url`).
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="mmgen-uvicorn", daemon=True)
        self.url = ""

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start (see the log above)")
            time.sleep(0.01)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
