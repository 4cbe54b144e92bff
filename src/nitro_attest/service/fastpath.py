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


class FastPath:
    """Routes ``POST newSession`` and ``POST session/ID`` to their handlers, nothing else."""

    def __init__(self, new_session: Handler, submit: Handler, store_down: Handler) -> None:
        self.new_session = new_session
        self.submit = submit
        self.store_down = store_down

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Serve the request and return True, or return False to let FastAPI serve it."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return False
        path: str = scope["path"]
        request = Request(scope, receive)
        if path == f"{API}/newSession":
            call = self.new_session(request)
        elif path.startswith(SESSION_PREFIX) and "/" not in path[len(SESSION_PREFIX):]:
            session_id = path[len(SESSION_PREFIX):]
            if not session_id:
                return False
            call = self.submit(session_id, request)
        else:
            return False
        try:
            response = await call
        except StoreError as exc:
            response = await self.store_down(request, exc)
        await response(scope, receive, send)
        return True


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
        counter = self.responses
        answer = send
        if counter is not None and scope["type"] == "http":
            endpoint = endpoint_label(scope["path"])
            children = self._children

            async def counted(message: Message) -> None:
                if message["type"] == "http.response.start":
                    key = (endpoint, message["status"])
                    child = children.get(key)
                    if child is None:  # bounded: fixed endpoint names times status codes
                        child = children[key] = counter.labels(endpoint, str(key[1]))
                    child.inc()
                await send(message)

            answer = counted
        if self.fast is None or not await self.fast(scope, receive, answer):
            await super().__call__(scope, receive, answer)


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
