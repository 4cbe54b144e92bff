"""Channel test helpers: an in-process exchange (no sockets) and an enclave served in a thread."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nitro_attest.channel.messages import (
    REQUEST_CHANNEL_ATTEST,
    REQUEST_SEALED_MESSAGE,
    ChannelAttestRequest,
    SealedMessageRequest,
)
from nitro_attest.channel.receiver import (
    ChannelReceiver,
    InMemorySecretStore,
    channel_handlers,
    handle_channel_attest,
    handle_sealed_message,
)
from nitro_attest.nsm import open_backend
from nitro_attest.wire.protocol import Request, Response
from nitro_attest.wire.server import nsm_handlers, settle_caller_key_pcr

from .serverkit import LogCollector, running_server


def attest_via_wire(
    receiver: ChannelReceiver, nsm: Any, fields: Mapping[str, Any]
) -> dict[str, Any]:
    """``channel_attest`` from wire fields, as the server decodes it; the answer's fields."""
    request = ChannelAttestRequest.from_fields(fields)
    return handle_channel_attest(receiver, nsm, request).to_fields()


def seal_via_wire(receiver: ChannelReceiver, fields: Mapping[str, Any]) -> dict[str, Any]:
    """``sealed_message`` from wire fields, as the server decodes it; the answer's fields."""
    return handle_sealed_message(receiver, SealedMessageRequest.from_fields(fields)).to_fields()


class LocalExchange:
    """Carries typed requests in-process through their wire fields (as the server decodes them),
    to the enclave-side handlers, and logs every request's fields."""

    def __init__(self, receiver: ChannelReceiver, nsm: Any, *, caller_keys: bool = False) -> None:
        settle_caller_key_pcr(nsm, allow=caller_keys)  # as the server does at start
        self.receiver = receiver
        self.nsm = nsm
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.tamper: Any = None  # optional callable(type, fields) -> fields

    def __call__(self, request: Request) -> Response:
        kind, sent = request.TYPE, request.to_fields()
        if self.tamper is not None:
            sent = self.tamper(kind, sent)
        self.requests.append((kind, sent))
        if kind == REQUEST_CHANNEL_ATTEST:
            return handle_channel_attest(
                self.receiver, self.nsm, ChannelAttestRequest.from_fields(sent)
            )
        if kind == REQUEST_SEALED_MESSAGE:
            return handle_sealed_message(self.receiver, SealedMessageRequest.from_fields(sent))
        raise AssertionError(f"unexpected request type {kind}")

    def kinds(self) -> list[str]:
        return [k for k, _ in self.requests]


class Enclave:
    """A channel-enabled enclave server running in a thread over the software NSM."""

    def __init__(self, address: str, store: InMemorySecretStore, logs: LogCollector,
                 root: bytes) -> None:
        self.address = address
        self.store = store
        self.logs = logs
        self.root = root

    def requests(self, kind: str) -> int:
        return sum(1 for line in self.logs.lines() if f" {kind} " in line)



@contextmanager
def serving(state: Path, listen: str, **channel: Any) -> Iterator[Enclave]:
    backend = open_backend("simulator", state_dir=state)
    store = InMemorySecretStore()
    receiver = ChannelReceiver(handler=store)
    handlers = {**nsm_handlers(backend), **channel_handlers(receiver, backend)}
    handlers.update(channel.get("override", lambda b: {})(backend))
    try:
        with running_server(listen, handlers) as (addr, _server, logs):
            yield Enclave(str(addr), store, logs, (state / "root.pem").read_bytes())
    finally:
        backend.close()
