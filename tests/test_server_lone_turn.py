"""A lone request's turn ends in the loop pass that read it: no second pass (and no epoll_wait)
just to send its answer; answers that arrive together are still sent as one turn."""

from __future__ import annotations

import socket
from typing import Any

from nitro_attest.wire.protocol import AttestRequest
from tests.serverkit import read_response
from tests.test_server_turns import RecordingLog, echoed_nonce, turn_server


def test_a_lone_request_does_not_schedule_its_turn() -> None:
    log = RecordingLog()
    with turn_server(log) as (addr, _server, loop, _errors):
        scheduled: list[Any] = []
        original = loop.call_soon

        def counting(callback: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(callback, "__name__", "") == "_end_turn":
                scheduled.append(callback)
            return original(callback, *args, **kwargs)

        loop.call_soon = counting  # type: ignore[method-assign]
        try:
            with socket.create_connection((addr.host, addr.port), timeout=5) as sock:
                for i in range(20):
                    sock.sendall(AttestRequest(nonce=b"lone-%02d" % i).encode())
                    assert echoed_nonce(read_response(sock)) == b"lone-%02d" % i
        finally:
            loop.call_soon = original  # type: ignore[method-assign]
    assert scheduled == []  # every turn ended where its request was read
    assert log.flushed_lines() == 20


def test_answers_ready_together_still_share_a_turn() -> None:
    log = RecordingLog()
    with turn_server(log) as (addr, _server, _loop, _errors):
        socks = [socket.create_connection((addr.host, addr.port), timeout=5) for _ in range(8)]
        try:
            # Pipelined on one connection: the frames after the first wait for the next pass,
            # so their turns are scheduled; across 8 connections written before the server
            # wakes, at least one turn holds more than one answer.
            for attempt in range(20):
                log.flushes.clear()
                for i, sock in enumerate(socks):
                    sock.sendall(AttestRequest(nonce=b"t%02d-%d" % (attempt, i)).encode())
                for i, sock in enumerate(socks):
                    assert echoed_nonce(read_response(sock)) == b"t%02d-%d" % (attempt, i)
                if any(len(batch) > 1 for batch in log.flushes):
                    break
            else:
                raise AssertionError("8 requests sent together were never answered in one turn")
        finally:
            for sock in socks:
                sock.close()
