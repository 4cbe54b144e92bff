"""The real NSM: /dev/nsm inside a Nitro Enclave, one NSM_IOCTL_RAW ioctl per request.

The ioctl takes ``struct nsm_raw { nsm_iovec request; nsm_iovec response; }`` with
``nsm_iovec = { u64 addr; u64 len; }`` (native endian, 32 bytes). The kernel writes the response
into our buffer and its length back into ``response.len``; it truncates silently, so we always
hand it the full 12288-byte buffer. The ioctl function and the device opener are injectable so the
marshalling can be tested where no /dev/nsm exists.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import threading
from collections.abc import Callable
from typing import Any

from nitro_attest.nsm import messages as m
from nitro_attest.nsm.api import NsmClient
from nitro_attest.nsm.backend import NsmError

DEVICE_PATH = "/dev/nsm"


def _iowr(type_: int, nr: int, size: int) -> int:
    # Linux asm-generic ioctl encoding: dir(2 bits) << 30 | size(14) << 16 | type(8) << 8 | nr(8)
    return (3 << 30) | (size << 16) | (type_ << 8) | nr


class NsmIovec(ctypes.Structure):
    _fields_ = (("addr", ctypes.c_uint64), ("len", ctypes.c_uint64))


class NsmRaw(ctypes.Structure):
    _fields_ = (("request", NsmIovec), ("response", NsmIovec))


NSM_IOCTL_RAW = _iowr(0x0A, 0, ctypes.sizeof(NsmRaw))  # 0xC0200A00

IoctlFn = Callable[[int, int, Any, bool], Any]
Opener = Callable[[str], int]


def _open_rw(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CLOEXEC)


class NsmDevice:
    """Raw transport to /dev/nsm: ``process(request_bytes) -> response_bytes``."""

    def __init__(
        self,
        path: str = DEVICE_PATH,
        *,
        ioctl: IoctlFn = fcntl.ioctl,
        opener: Opener = _open_rw,
        closer: Callable[[int], None] = os.close,
    ) -> None:
        try:
            self._fd: int | None = opener(path)
        except FileNotFoundError:
            raise NsmError(
                "InternalError",
                f"{path} not found: not inside a Nitro Enclave "
                "(use the software NSM instead: --nsm simulator)",
            ) from None
        except OSError as exc:
            raise NsmError("InternalError", f"cannot open {path}: {exc.strerror or exc}") from None
        self._ioctl = ioctl
        self._closer = closer
        self._path = path
        self._lock = threading.Lock()

    def process(self, request: bytes) -> bytes:
        if len(request) > m.MAX_REQUEST_SIZE:
            raise NsmError(
                "InputTooLarge", f"request is {len(request)} bytes, at most {m.MAX_REQUEST_SIZE}"
            )
        with self._lock:  # one buffer pair per call; serialise so close() cannot race a call
            if self._fd is None:
                raise NsmError("InternalError", f"{self._path} is closed")
            req_buf = ctypes.create_string_buffer(request, len(request))
            resp_buf = ctypes.create_string_buffer(m.MAX_RESPONSE_SIZE)
            raw = NsmRaw(
                NsmIovec(ctypes.addressof(req_buf), len(request)),
                NsmIovec(ctypes.addressof(resp_buf), m.MAX_RESPONSE_SIZE),
            )
            try:
                self._ioctl(self._fd, NSM_IOCTL_RAW, raw, True)
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    raise NsmError(
                        "InputTooLarge", "the NSM driver refused the request size"
                    ) from None
                raise NsmError(
                    "InternalError", f"NSM ioctl failed: {exc.strerror or exc}"
                ) from None
            length = raw.response.len
            if length > m.MAX_RESPONSE_SIZE:
                raise NsmError("InternalError", f"driver reported {length} response bytes")
            return resp_buf.raw[:length]

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                self._closer(self._fd)
                self._fd = None


def open_device(path: str = DEVICE_PATH) -> NsmClient:
    """An NsmBackend on the real /dev/nsm."""
    dev = NsmDevice(path)
    return NsmClient(dev.process, close=dev.close)
