"""A handler's OSError is logged with what the operator must fix (issue 21, item 17).

The disk filled under a secret store that writes files: the log said only "OSError". It now names
the errno, its text and the path; the client still learns only "internal".
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from nitro_attest.wire import client
from nitro_attest.wire.protocol import Request, Response
from tests.serverkit import running_server


def _failing(exc: Exception) -> Callable[[Request], Response]:
    def handler(request: Request) -> Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("exc", "logged"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/var/lib/secrets/s.tmp"),
         "OSError [ENOSPC] No space left on device: '/var/lib/secrets/s.tmp'"),
        (PermissionError(errno.EACCES, "Permission denied", "/a", None, "/b\nforged line"),
         "PermissionError [EACCES] Permission denied: '/a': '/b\\nforged line'"),
        (OSError(errno.EIO, "Input/output error"), "OSError [EIO] Input/output error"),
        (RuntimeError("request data 5ecret"), "RuntimeError"),
    ],
)
def test_handler_oserror_logged_with_errno_and_path(exc: Exception, logged: str) -> None:
    with (
        running_server("tcp://127.0.0.1:0", {"attest": _failing(exc)}) as (addr, _, logs),
        pytest.raises(client.EnclaveError) as info,
    ):
        client.request_attestation(str(addr), nonce=b"n" * 32)
    assert info.value.code == "internal"
    assert "secrets" not in info.value.remote_message  # the client learns nothing of it
    failures = [line for line in logs.lines() if "handler attest failed" in line]
    assert len(failures) == 1 and failures[0].endswith(logged), failures
    assert "5ecret" not in "\n".join(logs.lines())
