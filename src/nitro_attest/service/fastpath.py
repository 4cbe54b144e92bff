"""The two endpoints every session hits, served straight from ASGI by the same handler
functions the FastAPI routes document: FastAPI's routing, parameter solving and middleware stack
cost about as much CPU as the handlers themselves (bench/service.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.types import Message, Receive, Scope, Send

from nitro_attest.service.api_shapes import API, SESSION_PREFIX
from nitro_attest.service.sessions import StoreError

Handler = Callable[..., Awaitable[Response]]
_NEW_SESSION = f"{API}/newSession"


class FastPath:
    """Routes ``POST newSession`` and ``POST session/ID`` to their handlers, nothing else."""

    def __init__(self, new_session: Handler, submit: Handler, store_down: Handler) -> None:
        self.new_session = new_session
        self.submit = submit
        self.store_down = store_down

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> int | None:
        """Serve the request and return the status code sent, or None to let FastAPI serve it."""
        if scope["method"] != "POST":
            return None
        path: str = scope["path"]
        request = Request(scope, receive)
        if path == _NEW_SESSION:
            call = self.new_session(request)
        elif path.startswith(SESSION_PREFIX) and "/" not in path[len(SESSION_PREFIX):]:
            session_id = path[len(SESSION_PREFIX):]
            if not session_id:
                return None
            call = self.submit(session_id, request)
        else:
            return None
        try:
            response = await call
        except StoreError as exc:
            response = await self.store_down(request, exc)
        await response(scope, receive, send)
        return response.status_code


class ServiceApp(FastAPI):
    """FastAPI with the fast path in front of its whole middleware stack (which, as a middleware
    itself, the fast path would still pay for: about 30 us per request). An unexpected exception
    in a fast handler reaches the server, which answers 500 as Starlette's error middleware would.
    """

    fast: FastPath | None = None
    responses: Any = None  # the metrics' HTTP answers counter (endpoint, code), when set

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The counter's children by (endpoint, code): prometheus_client's labels() takes a lock
        # and builds its key on every call.
        self._children: dict[tuple[str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        if self.fast is not None:
            # Counted once sent, without a wrapper around every message. As with the wrapper, a
            # handler's exception reaches uvicorn, whose own 500 is not counted.
            status = await self.fast(scope, receive, send)
            if status is not None:
                if self.responses is not None:
                    self._count(scope["path"], status)
                return
        answer = send
        if self.responses is not None:
            endpoint = scope["path"]

            async def counted(message: Message) -> None:
                if message["type"] == "http.response.start":
                    self._count(endpoint, message["status"])
                await send(message)

            answer = counted
        await super().__call__(scope, receive, answer)

    def _count(self, path: str, status: int) -> None:
        key = (endpoint_label(path), status)
        child = self._children.get(key)
        if child is None:  # bounded: fixed endpoint names times status codes
            child = self._children[key] = self.responses.labels(key[0], str(status))
        child.inc()


def endpoint_label(path: str) -> str:
    """A fixed name per route (a label per session id would grow without bound)."""
    if path.startswith(SESSION_PREFIX):
        return "session"
    return _ENDPOINTS.get(path, "other")


_ENDPOINTS = {
    f"{API}/newSession": "newSession",
    "/healthz": "healthz",
    "/metrics": "metrics",
    "/openapi.json": "openapi",
    "/.well-known/veraison/verification": "discovery",
}
