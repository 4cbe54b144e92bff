"""The proxy server: accept, limits, the CONNECT handshake, dial, tunnel, one log line, drain.

Every connection passes through ``_serve``: it counts against ``max_connections`` from accept to
close, and its setup is bounded by the handshake deadline (CONNECT only) and the connect timeout.
Once joined, the Tunnel runs on loop callbacks until both directions end, an error, the idle
timeout, or shutdown. One INFO line per connection records peer, target, bytes each way, duration
and why it ended; never payload, and never unvalidated request bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import socket
import struct
from dataclasses import dataclass, field

from nitro_attest.codec.http import (
    MAX_HEAD_BYTES,
    ConnectRequest,
    HandshakeError,
    find_head_end,
    parse_connect,
    response,
)
from nitro_attest.errors import UsageError
from nitro_attest.proxy.allowlist import Allowlist
from nitro_attest.proxy.dial import (
    Dialer,
    DialError,
    Dialled,
    Resolver,
    close_quietly,
    dial_address,
    dial_host,
    system_dial,
    system_resolve,
)
from nitro_attest.proxy.hosts import HostSyntaxError, parse_host
from nitro_attest.proxy.idle import IdleWatch
from nitro_attest.proxy.pump import HAVE_SPLICE, IDLE_TICKS, PipePool, Tunnel
from nitro_attest.server_limits import PROXY_LIMITS, Limits
from nitro_attest.wire.transport import Address, bound_address, listening_socket

log = logging.getLogger("nitro_attest.proxy")

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_DRAIN_TIMEOUT = PROXY_LIMITS.drain_timeout
_ACCEPTS_PER_WAKEUP = 64
_LINGER_SECONDS = 1.0  # after an error answer, read and drop input briefly so the answer arrives
_LINGER_BYTES = 1 << 16


class ProxyConfigError(UsageError):
    """The proxy's configuration is unusable; one line saying which option."""


@dataclass(frozen=True)
class ProxyConfig:
    listen: Address
    target: Address | None  # None: speak HTTP CONNECT
    allowlist: Allowlist | None = None
    unsafe_any_host: bool = False
    # Read here: max_connections, max_per_peer, idle_timeout, header_timeout (the CONNECT
    # handshake), drain_timeout (the CLI's SIGTERM). Checked by Limits itself.
    limits: Limits = PROXY_LIMITS
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    splice: bool = True

    @property
    def max_connections(self) -> int:
        return self.limits.max_connections

    @property
    def max_per_peer(self) -> int:
        """Connections from one IP, CID or uid (0: no limit; a quarter by default)."""
        return self.limits.per_peer

    @property
    def idle_timeout(self) -> float:
        return self.limits.idle_timeout

    @property
    def handshake_timeout(self) -> float:
        return self.limits.header_timeout

    @property
    def outbound(self) -> bool:
        """Toward hosts the enclave picks or reaches out to: CONNECT, or vsock in and tcp out."""
        if self.target is None:
            return True
        return self.listen.scheme == "vsock" and self.target.scheme == "tcp"

    def __post_init__(self) -> None:
        if not isinstance(self.limits, Limits):
            raise ProxyConfigError("limits must be a nitro_attest.server_limits.Limits")
        if not self.connect_timeout > 0:
            raise ProxyConfigError("--connect-timeout must be a positive number")
        if self.allowlist is not None and self.unsafe_any_host:
            raise ProxyConfigError("--allowlist and --unsafe-any-host contradict each other")
        if self.outbound and self.allowlist is None and not self.unsafe_any_host:
            raise ProxyConfigError(
                "an outbound proxy needs --allowlist FILE (AWS vsock-proxy format); "
                "--unsafe-any-host lets the enclave reach any host"
            )
        target = self.target
        if target is None:
            return
        if self.allowlist is not None and target.scheme != "tcp":
            raise ProxyConfigError("--allowlist applies to tcp targets and to --to connect")
        if target.scheme == "tcp":
            try:
                host = parse_host(target.host)
            except HostSyntaxError as exc:
                raise ProxyConfigError(f"{target}: {exc}") from None
            if self.allowlist is not None and not self.allowlist.allows(host, target.port):
                raise ProxyConfigError(f"{target} is not on the allowlist")


@dataclass
class _Record:
    """What the log line says about one connection."""

    peer: str
    peer_key: str  # the peer's IP, CID or uid: what --max-per-peer counts
    started: float
    target: str = "-"
    address: str = ""
    early: int = 0  # bytes sent after the CONNECT head, forwarded before the tunnel started
    tunnel: Tunnel | None = field(default=None, repr=False)


class ProxyServer:
    def __init__(
        self,
        config: ProxyConfig,
        *,
        resolver: Resolver = system_resolve,
        dialer: Dialer = system_dial,
    ) -> None:
        self.config = config
        self._resolver = resolver
        self._dialer = dialer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._per_peer: dict[str, int] = {}
        self._accept_paused = False
        self._pipes = PipePool() if config.splice and HAVE_SPLICE else None
        self._idle: IdleWatch | None = None
        self.address: Address | None = None
        # For --metrics, read at scrape time: connections by how they ended, bytes each way.
        self.ended: dict[str, int] = {}
        self.bytes_up = 0
        self.bytes_down = 0

    @property
    def active(self) -> int:
        return len(self._tasks)

    async def start(self) -> Address:
        self._loop = asyncio.get_running_loop()
        backlog = min(max(self.config.max_connections, 128), 4096)
        self._listener = listening_socket(self.config.listen, backlog=backlog)
        self.address = bound_address(self.config.listen, self._listener)
        self._idle = IdleWatch(self._loop, self.config.idle_timeout / IDLE_TICKS)
        self._loop.add_reader(self._listener.fileno(), self._on_accept)
        return self.address

    def stop_accepting(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None or self._loop is None:
            return
        self._loop.remove_reader(listener.fileno())
        listener.close()
        if self.config.listen.scheme == "unix":
            with contextlib.suppress(OSError):
                os.unlink(self.config.listen.path)

    async def shutdown(self, drain_timeout: float = DEFAULT_DRAIN_TIMEOUT) -> None:
        """Stop accepting, let open connections finish for up to ``drain_timeout``, then cut."""
        self.stop_accepting()
        if self._tasks and drain_timeout > 0:
            await asyncio.wait(set(self._tasks), timeout=drain_timeout)
        await self.abort_all()

    async def abort_all(self) -> None:
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._listener is None and not self._tasks:  # stopped for good: free the helpers
            if self._pipes is not None:
                self._pipes.close()
            if self._idle is not None:
                self._idle.close()

    # -- accepting -----------------------------------------------------------------------------

    def _on_accept(self) -> None:
        assert self._loop is not None
        for _ in range(_ACCEPTS_PER_WAKEUP):
            if self._listener is None:
                return
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause_accepting(exc)
                    return
                raise
            sock.setblocking(False)
            record = _Record(*_peer_name(sock, peer), self._loop.time())
            if len(self._tasks) >= self.config.max_connections:
                self._refuse_busy(sock, record, f"{self.config.max_connections} connections open")
                continue
            per_peer = self._per_peer.get(record.peer_key, 0)
            if self.config.max_per_peer and per_peer >= self.config.max_per_peer:
                self._refuse_busy(sock, record, f"{per_peer} connections open from this peer")
                continue
            self._per_peer[record.peer_key] = per_peer + 1
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self._loop.create_task(self._serve(sock, record))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._forget, key=record.peer_key))

    def _forget(self, task: asyncio.Task[None], *, key: str) -> None:
        self._tasks.discard(task)
        left = self._per_peer.pop(key) - 1
        if left:
            self._per_peer[key] = left

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of descriptors: the listener stays readable, so wait instead of spinning."""
        assert self._loop is not None and self._listener is not None
        if not self._accept_paused:
            log.warning("accept paused for 0.1s: %s", os.strerror(exc.errno or 0))
        self._accept_paused = True
        self._loop.remove_reader(self._listener.fileno())
        self._loop.call_later(0.1, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if self._listener is not None and self._loop is not None:
            self._accept_paused = False
            self._loop.add_reader(self._listener.fileno(), self._on_accept)

    def _refuse_busy(self, sock: socket.socket, record: _Record, why: str) -> None:
        if self.config.target is None:
            with contextlib.suppress(OSError):
                sock.send(response(503))
        sock.close()
        self._log(record, 0, 0, f"refused: {why}")

    # -- one connection ------------------------------------------------------------------------

    async def _serve(self, client: socket.socket, record: _Record) -> None:
        assert self._loop is not None
        dialled: Dialled | None = None
        reason = "error"
        try:
            if self.config.target is None:
                dialled, leftover = await self._setup_connect(client, record)
            else:
                dialled, leftover = await self._setup_fixed(record), b""
            record.address = dialled.address
            if leftover:  # bytes the client sent after its CONNECT head, before our 200
                async with asyncio.timeout(self.config.connect_timeout):
                    await self._loop.sock_sendall(dialled.sock, leftover)
                record.early = len(leftover)
            tunnel = Tunnel(
                self._loop,
                client,
                dialled.sock,
                idle_timeout=self.config.idle_timeout,
                pipes=self._pipes,
            )
            record.tunnel = tunnel
            tunnel.start()
            assert self._idle is not None
            self._idle.add(tunnel)
            reason = await asyncio.shield(tunnel.done)
        except HandshakeError as exc:
            reason = f"refused {exc.status}: {exc.reason}"
            await self._answer_and_linger(client, exc.status)
        except DialError as exc:
            reason = f"refused {exc.status}: {exc.reason}"
            if self.config.target is None:
                await self._answer_and_linger(client, exc.status)
        except TimeoutError:
            reason = "refused: timed out sending early data to the target"
        except asyncio.CancelledError:
            reason = "shutdown"
            raise
        except OSError as exc:
            reason = f"error: {exc.strerror or exc}"
        finally:
            if record.tunnel is not None:
                record.tunnel.abort(reason)
                if self._idle is not None:
                    self._idle.discard(record.tunnel)
            else:
                close_quietly(client)
                close_quietly(dialled.sock if dialled is not None else None)
            up = record.early + (record.tunnel.up.count if record.tunnel is not None else 0)
            down = record.tunnel.down.count if record.tunnel is not None else 0
            self._log(record, up, down, reason)

    async def _setup_connect(self, client: socket.socket, record: _Record) -> tuple[Dialled, bytes]:
        assert self._loop is not None and self.config.target is None
        try:
            async with asyncio.timeout(self.config.handshake_timeout):
                head, leftover = await self._read_head(client)
        except TimeoutError:
            raise HandshakeError(
                408, f"no complete CONNECT request within {self.config.handshake_timeout:g}s"
            ) from None
        request = parse_connect(head)
        record.target = str(request)
        allowlist = self.config.allowlist
        if allowlist is not None and not allowlist.allows(request.host, request.port):
            raise HandshakeError(403, "not on the allowlist")
        dialled = await self._dial_host(request)
        try:
            await self._loop.sock_sendall(client, response(200))
        except BaseException:
            dialled.sock.close()
            raise
        return dialled, leftover

    async def _setup_fixed(self, record: _Record) -> Dialled:
        target = self.config.target
        assert target is not None
        record.target = str(target)
        if target.scheme == "tcp":
            return await self._dial_host(ConnectRequest(parse_host(target.host), target.port))
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                return await dial_address(target, dialer=self._dialer)
        except TimeoutError:
            raise DialError(504, "connect timed out") from None

    async def _dial_host(self, request: ConnectRequest) -> Dialled:
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                return await dial_host(
                    request.host,
                    request.port,
                    allowlist=self.config.allowlist,
                    resolver=self._resolver,
                    dialer=self._dialer,
                )
        except TimeoutError:
            raise DialError(504, f"no connection within {self.config.connect_timeout:g}s") from None

    async def _read_head(self, client: socket.socket) -> tuple[bytes, bytes]:
        """Read the CONNECT head; bytes past it (early tunnel data) are returned, not dropped."""
        assert self._loop is not None
        buffer = bytearray()
        while True:
            data = await self._loop.sock_recv(client, MAX_HEAD_BYTES - len(buffer))
            if not data:
                raise HandshakeError(400, "connection closed before the request head ended")
            buffer += data
            end = find_head_end(buffer)
            if end >= 0:
                return bytes(buffer[:end]), bytes(buffer[end:])

    async def _answer_and_linger(self, client: socket.socket, status: int) -> None:
        """Send the error answer, half-close, and drop input briefly so a reset does not eat it."""
        assert self._loop is not None
        try:
            client.send(response(status))
            client.shutdown(socket.SHUT_WR)
            async with asyncio.timeout(_LINGER_SECONDS):
                dropped = 0
                while dropped < _LINGER_BYTES:
                    data = await self._loop.sock_recv(client, 4096)
                    if not data:
                        break
                    dropped += len(data)
        except (OSError, TimeoutError):
            pass

    def _log(self, record: _Record, up: int, down: int, reason: str) -> None:
        assert self._loop is not None
        end = reason.split(":")[0].split(" ")[0]
        end = end if end in _END_CLASSES else "other"
        self.ended[end] = self.ended.get(end, 0) + 1
        self.bytes_up += up
        self.bytes_down += down
        address = f" address={record.address}" if record.address else ""
        log.info(
            "connection peer=%s target=%s%s up=%d down=%d duration=%.3fs end=%s",
            record.peer,
            record.target,
            address,
            up,
            down,
            self._loop.time() - record.started,
            reason,
        )


# How a connection ended, for the metrics label (the log line keeps the whole reason).
_END_CLASSES = frozenset({"closed", "idle", "refused", "error", "shutdown", "reset"})


def _peer_name(sock: socket.socket, peer: object) -> tuple[str, str]:
    """(name, key): tcp://IP:PORT, vsock://CID:PORT or a Unix peer's pid and uid; the key is the
    IP, CID or uid, what one client cannot easily multiply."""
    if sock.family == socket.AF_UNIX and hasattr(socket, "SO_PEERCRED"):
        try:
            pid, uid, _ = struct.unpack(
                "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            )
        except OSError:
            return "unix", "unix"
        return f"unix:pid={pid},uid={uid}", f"uid={uid}"
    if sock.family == socket.AF_UNIX:
        return "unix", "unix"
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        if sock.family == socket.AF_INET6:
            return f"tcp://[{host}]:{port}", str(host)
        if sock.family == socket.AF_INET:
            return f"tcp://{host}:{port}", str(host)
        return f"vsock://{host}:{port}", f"cid={host}"
    return "?", "?"
