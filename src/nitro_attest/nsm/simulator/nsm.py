"""A software NSM: the NsmBackend of a Nitro Enclave, outside of one.

It keeps 32 SHA-384 PCRs with the real NSM's lock rules and errors, and signs attestation
documents built exactly like the real NSM's (untagged COSE_Sign1, ES384, nine payload keys in AWS
order, 4-certificate cabundle, 3-hour leaf reused across documents) with its own CA hierarchy from
a state folder (see ``sim_state``). Everything that does not change per document is CBOR-encoded
once, so a document costs little more than its one ECDSA signature.

Thread-safe: PCR and leaf state sit behind one lock; the signature is made outside it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import struct
import threading
import time
from functools import lru_cache
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from nitro_attest.attestation.pcr import ZERO_PCR, extend, extend_zero
from nitro_attest.limits import MAX_PCRS, NSM_FIELD_BYTES
from nitro_attest.nsm import messages as m
from nitro_attest.nsm.backend import NsmDescription, NsmError, PcrDescription
from nitro_attest.nsm.simulator.measurements import platform_pcr
from nitro_attest.nsm.simulator.state import (
    LEAF_LIFETIME,
    Clock,
    SimulatorConfig,
    SimulatorState,
    issue_leaf,
    open_state,
)

BOOT_LOCKED = range(16)
RANDOM_SIZE = 256  # what the NSM hands out per GetRandom
VERSION = (1, 0, 0)
# Rotate the leaf once it has less than this left: real NSMs were seen reusing a leaf for ~2h20m,
# and a document signed just before expiry would fail verification a moment later.
LEAF_RENEW_MARGIN = dt.timedelta(minutes=30)

PROTECTED = b"\xa1\x01\x38\x22"  # {1: -35}: ES384
_SIG1_PREFIX = b"\x84\x6aSignature1\x44" + PROTECTED + b"\x40"
_DOC_PREFIX = b"\x84\x44" + PROTECTED + b"\xa0"
_SIG_HEADER = b"\x58\x60"  # bstr(96)
_ECDSA = ec.ECDSA(hashes.SHA384())


def _head(major: int, n: int) -> bytes:
    """A CBOR item head: major type and length/value, in the shortest form."""
    mt = major << 5
    if n < 24:
        return bytes((mt | n,))
    if n < 0x100:
        return bytes((mt | 24, n))
    if n < 0x10000:
        return struct.pack(">BH", mt | 25, n)
    if n < 0x100000000:
        return struct.pack(">BI", mt | 26, n)
    return struct.pack(">BQ", mt | 27, n)


def _text(s: str) -> bytes:
    b = s.encode()
    return _head(3, len(b)) + b


def _bstr(b: bytes) -> bytes:
    return _head(2, len(b)) + b


def _opt(b: bytes | None) -> bytes:
    return b"\xf6" if b is None else _bstr(b)


_K_PUBLIC_KEY = _text("public_key")
_K_USER_DATA = _text("user_data")
_K_NONCE = _text("nonce")


@lru_cache(maxsize=1)
def package_measurements() -> dict[int, bytes]:
    """Stable non-zero PCR0/1/2 for a simulated enclave with no measurements file.

    Derived from the installed nitro_attest sources, the way an EIF's PCRs follow its contents:
    each PCR is SHA384(0^48 || SHA384(content)) as in the EIF format. PCR1 measures a fixed
    "bootstrap" string, PCR2 the package sources, PCR0 both.
    """
    pkg = Path(__file__).resolve().parent.parent
    h = hashlib.sha384()
    for path in sorted(pkg.rglob("*.py"), key=lambda p: p.relative_to(pkg).as_posix()):
        data = path.read_bytes()
        rel = path.relative_to(pkg).as_posix().encode()
        h.update(struct.pack(">I", len(rel)) + rel + struct.pack(">Q", len(data)) + data)
    app = h.digest()
    boot = b"nitro-attest simulated bootstrap (kernel, cmdline, init)"
    return {
        0: extend_zero(hashlib.sha384(boot + app).digest()),
        1: extend_zero(hashlib.sha384(boot).digest()),
        2: extend_zero(hashlib.sha384(app).digest()),
    }


def image_measurements(config: SimulatorConfig) -> dict[int, bytes]:
    """What nitro-cli build-enclave would print for the simulated image: PCR0/1/2 (and 8)."""
    return dict(config.measurements) if config.measurements is not None else package_measurements()


class SimulatedNsm:
    """NsmBackend in software. One instance is one enclave boot."""

    def __init__(self, state: SimulatorState, *, clock: Clock = time.time) -> None:
        self._state = state
        self._clock = clock
        self._lock = threading.Lock()
        cfg = state.config
        boot_ms = int(clock() * 1000)
        # Enclave ids look like 0x0178_4234ec22_7b58: boot time in ms, then 16 random bits.
        self._enclave_id = ((boot_ms & 0xFFFFFFFFFFFF) << 16) | secrets.randbits(16)
        self.module_id = f"{cfg.instance_id}-enc{self._enclave_id:016x}"

        self._pcrs = [ZERO_PCR] * MAX_PCRS
        if not cfg.debug:  # debug enclaves get zero image PCRs; PCR3/4 are kept
            for index, value in image_measurements(cfg).items():
                self._pcrs[index] = value
        if cfg.role_arn is not None:
            self._pcrs[3] = platform_pcr(cfg.role_arn)
        self._pcrs[4] = platform_pcr(cfg.instance_id)
        self._locked = set(BOOT_LOCKED)

        self._leaf_key: ec.EllipticCurvePrivateKey | None = None
        self._leaf_not_before = self._leaf_not_after = dt.datetime.min.replace(tzinfo=dt.UTC)
        self._head = b""  # payload bytes before the timestamp value
        self._pcr_kv = b""  # "pcrs" key and map, rebuilt when the locked set changes
        self._certs_kv = b""  # certificate and cabundle keys and values
        with self._lock:
            self._ensure_leaf()
            self._encode_pcrs()

    @classmethod
    def open(cls, state_dir: Path, *, clock: Clock = time.time) -> SimulatedNsm:
        return cls(open_state(state_dir, clock=clock), clock=clock)

    @property
    def state(self) -> SimulatorState:
        return self._state

    @property
    def root_pem(self) -> bytes:
        return self._state.root_pem

    # ------------------------------------------------------------ pre-encoding (lock held)

    def _ensure_leaf(self) -> None:
        now = self._clock()
        t = dt.datetime.fromtimestamp(now, dt.UTC)
        if (
            self._leaf_key is not None
            and self._leaf_not_before <= t  # a clock stepped back makes the leaf "not yet valid"
            and t + LEAF_RENEW_MARGIN < self._leaf_not_after
        ):
            return
        self._state.renew(now)  # re-issues, on disk too, any CA not valid at t (future ones too)
        cert, key = issue_leaf(
            self._state.chain["instance"],
            module_id=self.module_id,
            enclave_id=self._enclave_id,
            region=self._state.config.region,
            now=t,
        )
        self._leaf_key = key
        self._leaf_not_before = t.replace(microsecond=0)
        self._leaf_not_after = self._leaf_not_before + LEAF_LIFETIME
        # Indefinite-length payload map (bf .. ff), as the NSM has emitted since 2025-08.
        self._head = (
            b"\xbf"
            + _text("module_id")
            + _text(self.module_id)
            + _text("digest")
            + _text("SHA384")
            + _text("timestamp")
        )
        bundle = self._state.cabundle()
        self._certs_kv = (
            _text("certificate")
            + _bstr(cert.public_bytes(Encoding.DER))
            + _text("cabundle")
            + _head(4, len(bundle))
            + b"".join(_bstr(c) for c in bundle)
        )

    def _encode_pcrs(self) -> None:
        locked = sorted(self._locked)
        self._pcr_kv = (
            _text("pcrs")
            + _head(5, len(locked))
            + b"".join(_head(0, i) + _bstr(self._pcrs[i]) for i in locked)
        )

    # ------------------------------------------------------------ NsmBackend

    def attestation(
        self,
        *,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        for name, value in (("user_data", user_data), ("nonce", nonce), ("public_key", public_key)):
            if value is not None and len(value) > NSM_FIELD_BYTES:
                raise NsmError(
                    "InputTooLarge",
                    f"{name} is {len(value)} bytes, at most {NSM_FIELD_BYTES} allowed",
                )
        with self._lock:
            self._ensure_leaf()
            head, pcr_kv, certs_kv, key = self._head, self._pcr_kv, self._certs_kv, self._leaf_key
            timestamp = int(self._clock() * 1000)
        assert key is not None
        payload = b"".join(
            (
                head,
                _head(0, timestamp),
                pcr_kv,
                certs_kv,
                _K_PUBLIC_KEY,
                _opt(public_key),
                _K_USER_DATA,
                _opt(user_data),
                _K_NONCE,
                _opt(nonce),
                b"\xff",
            )
        )
        payload_bstr = _bstr(payload)
        r, s = decode_dss_signature(key.sign(_SIG1_PREFIX + payload_bstr, _ECDSA))
        return b"".join(
            (_DOC_PREFIX, payload_bstr, _SIG_HEADER, r.to_bytes(48, "big"), s.to_bytes(48, "big"))
        )

    def describe_nsm(self) -> NsmDescription:
        with self._lock:
            locked = tuple(sorted(self._locked))
        return NsmDescription(*VERSION, self.module_id, MAX_PCRS, locked, "SHA384")

    def _check_index(self, index: int) -> None:
        if not 0 <= index < MAX_PCRS:
            raise NsmError("InvalidIndex", f"PCR index {index} outside 0..{MAX_PCRS - 1}")

    def describe_pcr(self, index: int) -> PcrDescription:
        self._check_index(index)
        with self._lock:
            return PcrDescription(locked=index in self._locked, data=self._pcrs[index])

    def extend_pcr(self, index: int, data: bytes) -> bytes:
        self._check_index(index)
        if len(data) > m.MAX_REQUEST_SIZE:
            raise NsmError("InputTooLarge", f"extend data is {len(data)} bytes")
        with self._lock:
            if index in self._locked:
                raise NsmError("ReadOnlyIndex", f"PCR{index} is locked")
            self._pcrs[index] = value = extend(self._pcrs[index], bytes(data))
            return value

    def lock_pcr(self, index: int) -> None:
        self._check_index(index)
        with self._lock:
            if index in self._locked:
                raise NsmError("ReadOnlyIndex", f"PCR{index} is already locked")
            self._locked.add(index)
            self._encode_pcrs()

    def lock_pcrs(self, range_: int) -> None:
        if not 0 <= range_ <= MAX_PCRS:
            raise NsmError("InvalidIndex", f"range {range_} exceeds max_pcrs {MAX_PCRS}")
        with self._lock:  # locking already-locked PCRs in a range is fine (nsm-check does it)
            self._locked.update(range(range_))
            self._encode_pcrs()

    def get_random(self) -> bytes:
        return secrets.token_bytes(RANDOM_SIZE)

    def close(self) -> None:
        pass

    # ------------------------------------------------------------ raw NSM API

    def handle(self, request: m.Request) -> m.Response:
        """Answer one decoded request as the NSM would (errors become Error responses)."""
        try:
            if isinstance(request, m.Attestation):
                return m.AttestationResponse(
                    self.attestation(
                        user_data=request.user_data,
                        nonce=request.nonce,
                        public_key=request.public_key,
                    )
                )
            if isinstance(request, m.DescribeNsm):
                return m.DescribeNsmResponse(self.describe_nsm())
            if isinstance(request, m.DescribePcr):
                d = self.describe_pcr(request.index)
                return m.DescribePcrResponse(lock=d.locked, data=d.data)
            if isinstance(request, m.ExtendPcr):
                return m.ExtendPcrResponse(self.extend_pcr(request.index, request.data))
            if isinstance(request, m.LockPcr):
                self.lock_pcr(request.index)
                return m.LockPcrResponse()
            if isinstance(request, m.LockPcrs):
                self.lock_pcrs(request.range)
                return m.LockPcrsResponse()
            if isinstance(request, m.GetRandom):
                return m.GetRandomResponse(self.get_random())
        except NsmError as exc:
            return m.ErrorResponse(exc.code)
        return m.ErrorResponse("InvalidOperation")

    def process(self, request: bytes) -> bytes:
        """The NSM API over bytes: request CBOR in, response CBOR out."""
        decoded = m.decode_request_or_error(request)
        if isinstance(decoded, m.ErrorResponse):
            return m.encode_response(decoded)
        return m.encode_response(self.handle(decoded))
