"""A registered model's scoring server with bounds: MLflow's own server behind a body cap.

``mlflow models serve`` reads any request body whole and parses any JSON: a 200 MB body or
JSON nested 100,000 deep reached the model's process (1.55 GB, or a 500). ``aepipe models
serve`` runs the same MLflow scoring app (the same routes and answers) behind an ASGI layer
that answers 413 past ``max_body_bytes`` (declared or streamed) and 400 to JSON that is
malformed or nested past Python's parser, before MLflow sees it; the model refuses more rows
than ``max_rows`` a request and infinite values (:func:`tasks.pyfunc_model.check_request`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any

from tasks.pyfunc_model import ENV_MAX_ROWS

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BODY_BYTES = 16 << 20


class BoundedBody:
    """ASGI middleware: read a POST body up to ``limit`` bytes (413 beyond), check JSON bodies
    parse (400 otherwise), then hand the body on to ``app`` unchanged."""

    def __init__(self, app: App, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode() or "0"
        if not declared.isdigit() or int(declared) > self.limit:
            await _answer(send, 413, f"request body over {self.limit:,} bytes")
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _answer(send, 413, f"request body over {self.limit:,} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if headers.get(b"content-type", b"").split(b";")[0].strip() == b"application/json":
            try:
                json.loads(body)
            except RecursionError:
                await _answer(send, 400, "JSON nested too deeply")
                return
            except ValueError as err:
                await _answer(send, 400, f"malformed JSON: {err}")
                return
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _answer(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error_code": "BAD_REQUEST", "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def scoring_app(model_uri: str, max_body_bytes: int, max_rows: int) -> App:
    """MLflow's scoring app for ``model_uri`` (``models:/name@alias``) behind
    :class:`BoundedBody`, its model refusing more than ``max_rows`` rows a request."""
    import mlflow
    from mlflow.pyfunc import scoring_server

    os.environ[ENV_MAX_ROWS] = str(max_rows)
    model = mlflow.pyfunc.load_model(model_uri)
    return BoundedBody(scoring_server.init(model), max_body_bytes)


def serve_model(model_uri: str, host: str, port: int, max_body_bytes: int, max_rows: int) -> None:
    """Serve ``model_uri`` on ``host:port`` until stopped (uvicorn, one process)."""
    import uvicorn

    uvicorn.run(scoring_app(model_uri, max_body_bytes, max_rows), host=host, port=port)
