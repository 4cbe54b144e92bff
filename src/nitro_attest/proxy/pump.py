"""The data path: a Tunnel joins two sockets with one Pump per direction.

A Pump moves bytes with ``os.splice`` through a pipe (socket -> pipe -> socket, no copy into
Python), or, where splice cannot work on a socket (EINVAL, e.g. some vsock kernels), through
one fixed 64 KiB buffer. It reads only when its pipe or buffer is empty and stops reading while
the destination is full, so a slow reader holds at most one pipe or buffer in the proxy: the rest
waits in the sender's kernel buffers (backpressure). End of input is passed on as a half-close
(shutdown SHUT_WR) once everything read has been written. A reset or write error on either side
ends the whole tunnel with a reset on the other side, so a cut-off stream never looks complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
from typing import Literal

CHUNK = 1 << 16
HAVE_SPLICE = hasattr(os, "splice")  # Linux; elsewhere (macOS) the buffered copy is used
SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_NO_SPLICE = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})
_LINGER_RESET = struct.pack("ii", 1, 0)
IDLE_TICKS = 4

Side = Literal["client", "target"]


class PipePool:
    """Pipes for splice, lent to a Pump only while bytes are in flight.

    An idle connection holds no pipe, so 1,000 quiet tunnels cost 2,000 descriptors, not 6,000,
    and an unprivileged proxy stays under the kernel's per-user pipe budget. A pipe comes back
    only when empty; one still holding bytes is closed instead.
    """

    def __init__(self, keep: int = 64) -> None:
        self._free: list[tuple[int, int]] = []
        self._keep = keep

    def take(self) -> tuple[int, int]:
        if self._free:
            return self._free.pop()
        return os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def give(self, pipe: tuple[int, int], *, empty: bool = True) -> None:
        if empty and len(self._free) < self._keep:
            self._free.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def close(self) -> None:
        while self._free:
            self.give(self._free.pop(), empty=False)


class Pump:
    """One direction, ``src`` -> ``dst``; counts the bytes it delivered."""

    __slots__ = (
        "_buf",
        "_dst",
        "_end",
        "_loop",
        "_pipe",
        "_pool",
        "_src",
        "_start",
        "_tunnel",
        "_waiting",
        "count",
        "eof",
        "finished",
        "moved",
        "pending",
        "sides",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        tunnel: Tunnel,
        src: socket.socket,
        dst: socket.socket,
        sides: tuple[Side, Side],
        *,
        pipes: PipePool | None,
    ) -> None:
        self._loop = loop
        self._tunnel = tunnel
        self._src = src.fileno()
        self._dst = dst.fileno()
        self.sides = sides
        self._pool = pipes  # None: buffered copy
        self._pipe: tuple[int, int] | None = None
        self._buf: memoryview | None = None
        self._start = self._end = 0
        self.pending = 0  # bytes read but not yet written (in the pipe or the buffer)
        self.count = 0
        self.eof = False
        self.finished = False
        self.moved = False  # bytes moved since the tunnel's last idle tick
        self._waiting = False

    @property
    def splicing(self) -> bool:
        return self._pool is not None

    def start(self) -> None:
        self._loop.add_reader(self._src, self._on_readable)

    def close(self) -> None:
        self._loop.remove_reader(self._src)
        self._loop.remove_writer(self._dst)
        self._return_pipe()

    def _return_pipe(self) -> None:
        if self._pipe is not None and self._pool is not None:
            self._pool.give(self._pipe, empty=self.pending == 0)
        self._pipe = None

    # -- reading -------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        pool, pipe = self._pool, self._pipe
        if pool is not None and pipe is None and self._fast_path(pool):
            return
        try:
            n = self._read()
        except BlockingIOError:
            self._return_pipe()
            return
        except OSError as exc:
            self._tunnel.pump_failed(self, self.sides[0], exc)
            return
        if n == 0:
            self.eof = True
            self._loop.remove_reader(self._src)
        else:
            self.moved = True
        self._flush()

    def _fast_path(self, pool: PipePool) -> bool:
        """The common case, kept short: a chunk in and straight out. False: nothing was read and
        the full path must look (end of input, or a socket that cannot splice)."""
        pipe = pool.take()
        try:
            n = os.splice(self._src, pipe[1], CHUNK, None, None, SPLICE_FLAGS)
        except BlockingIOError:
            pool.give(pipe)
            return True
        except OSError as exc:
            pool.give(pipe)
            if exc.errno in _NO_SPLICE:
                return False
            self._tunnel.pump_failed(self, self.sides[0], exc)  # reported once: not retried
            return True
        if n == 0:
            pool.give(pipe)
            return False
        self.moved = True
        try:
            written = os.splice(pipe[0], self._dst, n, None, None, SPLICE_FLAGS)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            if exc.errno not in _NO_SPLICE:
                self._pipe, self.pending = pipe, n
                self._tunnel.pump_failed(self, self.sides[1], exc)
                return True
            written = 0  # the full path moves the pipe's bytes to the buffer
        self.count += written
        if written == n:
            pool.give(pipe)
            return True
        self._pipe, self.pending = pipe, n - written
        self._flush()
        return True

    def _read(self) -> int:
        if self._pool is not None:
            if self._pipe is None:
                self._pipe = self._pool.take()
            try:
                n = os.splice(self._src, self._pipe[1], CHUNK, flags=SPLICE_FLAGS)
            except OSError as exc:
                if exc.errno not in _NO_SPLICE:
                    raise
                self._use_buffer()
                return self._read()
            self.pending = n
            return n
        n = os.readv(self._src, [self._buffer()])
        self._start, self._end, self.pending = 0, n, n
        return n

    # -- writing -------------------------------------------------------------------------------

    def _flush(self) -> None:
        try:
            done = self._write_pending()
        except OSError as exc:
            self._tunnel.pump_failed(self, self.sides[1], exc)
            return
        if not done:
            if not self._waiting:  # destination full: stop reading until it drains
                self._waiting = True
                self._loop.remove_reader(self._src)
                self._loop.add_writer(self._dst, self._on_writable)
            return
        self._return_pipe()
        if self._waiting:
            self._waiting = False
            self._loop.remove_writer(self._dst)
            if not self.eof:
                self._loop.add_reader(self._src, self._on_readable)
        if self.eof and not self.finished:
            self._finish()

    def _on_writable(self) -> None:
        self.moved = True
        self._flush()

    def _write_pending(self) -> bool:
        """Write what is pending; False if the destination would block first."""
        while self.pending:
            try:
                if self._pipe is not None:
                    n = os.splice(self._pipe[0], self._dst, self.pending, flags=SPLICE_FLAGS)
                else:
                    assert self._buf is not None
                    n = os.write(self._dst, self._buf[self._start : self._end])
                    self._start += n
            except BlockingIOError:
                return False
            except OSError as exc:
                if self._pipe is None or exc.errno not in _NO_SPLICE:
                    raise
                self._use_buffer()
                continue
            self.pending -= n
            self.count += n
        return True

    def _finish(self) -> None:
        self.finished = True
        self._tunnel.half_close(self.sides[1])
        self._tunnel.pump_finished()

    # -- fallback ------------------------------------------------------------------------------

    def _buffer(self) -> memoryview:
        if self._buf is None:
            self._buf = memoryview(bytearray(CHUNK))
        return self._buf

    def _use_buffer(self) -> None:
        """Leave splice for good (this socket cannot splice): move what the pipe holds to the
        buffer and give the emptied pipe back."""
        pipe, self._pipe = self._pipe, None
        data = os.read(pipe[0], self.pending) if pipe is not None and self.pending else b""
        buf = self._buffer()
        buf[: len(data)] = data
        self._start, self._end, self.pending = 0, len(data), len(data)
        if pipe is not None and self._pool is not None:
            self._pool.give(pipe)
        self._pool = None


class Tunnel:
    """Two sockets joined both ways until both directions end, an error, or ``abort``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: socket.socket,
        target: socket.socket,
        *,
        idle_timeout: float,
        pipes: PipePool | None,
    ) -> None:
        self._loop = loop
        self._socks = {"client": client, "target": target}
        self._idle = idle_timeout
        self._quiet_ticks = 0
        self.done: asyncio.Future[str] = loop.create_future()
        self.up = Pump(loop, self, client, target, ("client", "target"), pipes=pipes)
        self.down = Pump(loop, self, target, client, ("target", "client"), pipes=pipes)

    def start(self) -> None:
        self.up.start()
        self.down.start()

    def half_close(self, side: Side) -> None:
        with contextlib.suppress(OSError):  # the peer may be gone already; its pump reports it
            self._socks[side].shutdown(socket.SHUT_WR)

    def pump_finished(self) -> None:
        if self.up.finished and self.down.finished:
            self._end("closed", reset=False)

    def pump_failed(self, pump: Pump, side: Side, exc: OSError) -> None:
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        what = "read" if side == pump.sides[0] else "write"
        self._end(f"{side} {what} error {name}", reset=True)

    def abort(self, reason: str) -> None:
        self._end(reason, reset=True)

    def tick(self) -> None:
        """Called every idle/IDLE_TICKS seconds (see idle.py). The pumps flag movement, cheaper
        than reading the clock per event: a tunnel is cut after 1 to 1.25 idle timeouts of
        silence."""
        if self.up.moved or self.down.moved:
            self.up.moved = self.down.moved = False
            self._quiet_ticks = 0
            return
        self._quiet_ticks += 1
        if self._quiet_ticks >= IDLE_TICKS:
            self._end(f"idle for {self._idle:g}s", reset=True)

    def _end(self, reason: str, *, reset: bool) -> None:
        if self.done.done():
            return
        self.up.close()
        self.down.close()
        for sock in self._socks.values():
            if reset and sock.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(OSError):  # RST, not FIN: a cut stream must not look whole
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            sock.close()
        self.done.set_result(reason)
