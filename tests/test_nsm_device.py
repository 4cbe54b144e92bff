"""The /dev/nsm driver's ioctl marshalling, with a fake ioctl standing in for the kernel."""

from __future__ import annotations

import ctypes
import errno
from typing import Any

import pytest

from nitro_attest.nsm import device
from nitro_attest.nsm import messages as m
from nitro_attest.nsm.api import NsmClient
from nitro_attest.nsm.backend import NsmError


def test_ioctl_number_is_iowr_0x0a_0_32() -> None:
    # _IOWR(type, nr, size) = (READ|WRITE = 3) << 30 | size << 16 | type << 8 | nr
    expected = (3 << 30) | (32 << 16) | (0x0A << 8) | 0
    assert device.NSM_IOCTL_RAW == expected == 0xC0200A00


def test_struct_layout() -> None:
    assert ctypes.sizeof(device.NsmIovec) == 16
    assert ctypes.sizeof(device.NsmRaw) == 32
    assert device.NsmIovec.addr.offset == 0
    assert device.NsmIovec.len.offset == 8
    assert device.NsmRaw.request.offset == 0
    assert device.NsmRaw.response.offset == 16


class FakeKernel:
    """Reads the request through the addresses given, writes an answer like drivers/misc/nsm.c."""

    def __init__(self, answer: bytes, err: int | None = None) -> None:
        self.answer = answer
        self.err = err
        self.seen: list[tuple[int, int, bytes, int]] = []

    def __call__(self, fd: int, cmd: int, arg: Any, mutate: bool) -> int:
        assert mutate is True
        assert isinstance(arg, device.NsmRaw)  # a writable buffer the kernel fills in
        raw = arg
        req = ctypes.string_at(raw.request.addr, raw.request.len)
        self.seen.append((fd, cmd, req, raw.response.len))
        if self.err is not None:
            raise OSError(self.err, "fake")
        n = min(len(self.answer), raw.response.len)  # the kernel truncates silently
        ctypes.memmove(raw.response.addr, self.answer, n)
        raw.response.len = n
        return 0


def make(kernel: FakeKernel) -> tuple[device.NsmDevice, list[int]]:
    closed: list[int] = []
    dev = device.NsmDevice(
        "/dev/fake-nsm", ioctl=kernel, opener=lambda path: 42, closer=closed.append
    )
    return dev, closed


def test_process_passes_request_and_reads_response_length() -> None:
    answer = m.encode_response(m.GetRandomResponse(b"\x07" * 256))
    kernel = FakeKernel(answer)
    dev, closed = make(kernel)
    client = NsmClient(dev.process, close=dev.close)
    assert client.get_random() == b"\x07" * 256
    fd, cmd, req, resp_len = kernel.seen[0]
    assert (fd, cmd) == (42, 0xC0200A00)
    assert req == bytes.fromhex("6947657452616e646f6d")
    assert resp_len == 12288
    client.close()
    assert closed == [42]
    with pytest.raises(NsmError):
        dev.process(b"x")


def test_error_response_becomes_nsm_error() -> None:
    dev, _ = make(FakeKernel(m.encode_response(m.ErrorResponse("InvalidIndex"))))
    with pytest.raises(NsmError) as e:
        NsmClient(dev.process).describe_pcr(99)
    assert e.value.code == "InvalidIndex"


def test_unexpected_response_is_invalid_response() -> None:
    dev, _ = make(FakeKernel(m.encode_response(m.LockPcrResponse())))
    with pytest.raises(NsmError) as e:
        NsmClient(dev.process).get_random()
    assert e.value.code == "InvalidResponse"


def test_garbage_response_is_internal_error() -> None:
    dev, _ = make(FakeKernel(b"\xff\xff"))
    with pytest.raises(NsmError) as e:
        NsmClient(dev.process).describe_nsm()
    assert e.value.code == "InternalError"


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (errno.EMSGSIZE, "InputTooLarge"),
        (errno.EIO, "InternalError"),
        (errno.EINVAL, "InternalError"),
    ],
)
def test_errno_mapping(err: int, code: str) -> None:
    dev, _ = make(FakeKernel(b"", err=err))
    with pytest.raises(NsmError) as e:
        dev.process(m.encode_request(m.GetRandom()))
    assert e.value.code == code


def test_oversize_request_never_reaches_ioctl() -> None:
    kernel = FakeKernel(b"")
    dev, _ = make(kernel)
    with pytest.raises(NsmError) as e:
        dev.process(b"x" * 4097)
    assert e.value.code == "InputTooLarge"
    assert kernel.seen == []


def test_missing_device_message_points_at_simulator(tmp_path: Any) -> None:
    with pytest.raises(NsmError) as e:
        device.NsmDevice(str(tmp_path / "nsm"))
    assert "--nsm simulator" in str(e.value)
