"""The software NSM's persistent state: configuration and its own CA hierarchy.

Layout of the state folder (mode 0700; private keys 0600):

    config.json           region, instance id, role ARN, debug flag, measured PCRs (or null)
    root.pem  root.key    self-signed root, CN=aws.nitro-enclaves.SIMULATED, 30 years
    regional.pem/.key     pathLen 2, ~20 days, re-issued when it would expire under a leaf
    zonal.pem/.key        pathLen 1, ~6 days, idem
    instance.pem/.key     pathLen 0, 1 day, idem; its CN names the instance id

The per-boot 3-hour leaf key is never written to disk. Profiles copy real AWS certificates
(see docs/simulator.md); only the names (SIMULATED root, .invalid CRL URLs) say what this is.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import itertools
import json
import os
import re
import secrets
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nitro_attest.errors import ConfigurationError
from nitro_attest.nsm.simulator.measurements import MEASURED_PCRS

CONFIG_FILE = "config.json"
ROOT_CN = "aws.nitro-enclaves.SIMULATED"
DEFAULT_REGION = "us-east-1"
LEAF_LIFETIME = dt.timedelta(hours=3)
CA_LEVELS = ("root", "regional", "zonal", "instance")
_LIFETIMES = {
    "root": dt.timedelta(days=365 * 30),
    "regional": dt.timedelta(days=20, hours=1),
    "zonal": dt.timedelta(days=5, hours=17),
    "instance": dt.timedelta(days=1),
}
_PATHLEN = {"root": None, "regional": 2, "zonal": 1, "instance": 0}
_MAX_FILE = 64 * 1024
_INSTANCE_ID = re.compile(r"i-[0-9a-f]{17}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")
_PCR_KEY = re.compile(r"[0-9]{1,2}")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")


class SimulatorStateError(ConfigurationError):
    """The state folder or the configuration given to the simulator is unusable."""


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    region: str = DEFAULT_REGION
    instance_id: str = ""
    role_arn: str | None = None
    debug: bool = False
    measurements: dict[int, bytes] | None = None

    def validate(self) -> None:
        if self.measurements is not None:
            odd = sorted(i for i in self.measurements if i not in MEASURED_PCRS)
            if odd:  # an EIF measures PCR0/1/2/8; anything else would land on a platform PCR
                raise SimulatorStateError(
                    f"measurements: PCR{odd[0]} is not an image PCR (allowed: PCR0, PCR1, PCR2, "
                    "PCR8)"
                )
        if not _INSTANCE_ID.fullmatch(self.instance_id):
            raise SimulatorStateError(
                f"instance id must look like i-<17 hex digits>, got {self.instance_id!r:.40}"
            )
        if not _REGION.fullmatch(self.region):
            raise SimulatorStateError(f"region must look like us-east-1, got {self.region!r:.40}")
        if self.role_arn is not None and not _ROLE_ARN.fullmatch(self.role_arn):
            raise SimulatorStateError(
                "role ARN must look like arn:aws:iam::123456789012:role/NAME, "
                f"got {self.role_arn!r:.80}"
            )
        if self.measurements is not None:
            if not {0, 1, 2} <= set(self.measurements):
                raise SimulatorStateError("measurements need PCR0, PCR1 and PCR2")
            if any(len(v) != 48 for v in self.measurements.values()):
                raise SimulatorStateError("measured PCRs must be 48 bytes")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 1,
            "region": self.region,
            "instance_id": self.instance_id,
            "role_arn": self.role_arn,
            "debug": self.debug,
            "measurements": None
            if self.measurements is None
            else {str(k): v.hex() for k, v in sorted(self.measurements.items())},
        }

    @classmethod
    def from_json(cls, data: Any) -> SimulatorConfig:
        if not isinstance(data, dict) or data.get("format") != 1:
            raise SimulatorStateError(f"{CONFIG_FILE}: not a format-1 simulator config")
        try:
            meas = data["measurements"]
            measurements = None if meas is None else _measurements_from_json(meas)
            cfg = cls(
                region=str(data["region"]),
                instance_id=str(data["instance_id"]),
                role_arn=None if data["role_arn"] is None else str(data["role_arn"]),
                debug=data["debug"] is True,
                measurements=measurements,
            )
        except SimulatorStateError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SimulatorStateError(f"{CONFIG_FILE}: malformed ({exc})") from None
        try:
            cfg.validate()
        except SimulatorStateError as exc:
            raise SimulatorStateError(f"{CONFIG_FILE}: {exc}") from None
        return cfg


def _measurements_from_json(meas: Any) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for key, value in meas.items():
        if not isinstance(key, str) or not _PCR_KEY.fullmatch(key):
            raise SimulatorStateError(
                f"{CONFIG_FILE}: measurements key {str(key)[:20]!r} is not a PCR index (0..31)"
            )
        out[int(key)] = bytes.fromhex(value)
    return out


def random_instance_id() -> str:
    return "i-0" + secrets.token_hex(8)


def default_state_dir() -> Path:
    """$XDG_DATA_HOME/nitro-attest/simulator, or ~/.local/share/nitro-attest/simulator."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "nitro-attest" / "simulator"


# ---------------------------------------------------------------- files


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a private temporary file renamed into place (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)  # the umask may have narrowed or (never) widened it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_capped(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(_MAX_FILE + 1)
    except FileNotFoundError:
        raise SimulatorStateError(
            f"{path}: missing; run `nitro-attest sim init --force` to recreate the state"
        ) from None
    except OSError as exc:
        raise SimulatorStateError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > _MAX_FILE:
        raise SimulatorStateError(f"{path}: larger than {_MAX_FILE} bytes")
    return data


def _refuse_symlink(path: Path) -> None:
    """The state folder holds private keys: never act on a symlink's target (chmod, lock, write)."""
    if path.is_symlink():
        raise SimulatorStateError(
            f"{path}: is a symbolic link; give the simulator state folder's real path "
            f"({os.path.realpath(path)}) or move the folder there"
        )


def _open_dir(path: Path) -> int:
    """An fd on the state folder itself, refusing a symlink in its last component."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and path.is_symlink():
            _refuse_symlink(path)
        if exc.errno == errno.ENOTDIR:
            raise SimulatorStateError(f"{path}: not a folder") from None
        raise SimulatorStateError(f"{path}: cannot open: {exc.strerror or exc}") from None


def _make_private_dirs(path: Path) -> None:
    """Create ``path`` and any missing parent as 0700 whatever the umask (``mkdir(parents=True,
    mode=...)`` gives the parents the umask's default, 0777 under umask 000). Folders that
    exist are left as they are."""
    missing: list[Path] = []
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile by another process: theirs to set
            continue
        os.chmod(folder, 0o700, follow_symlinks=False)


def _ensure_dir(path: Path) -> None:
    _refuse_symlink(path)
    try:
        _make_private_dirs(path)
    except OSError as exc:
        raise SimulatorStateError(
            f"{path}: cannot create state folder: {exc.strerror or exc}"
        ) from None
    fd = _open_dir(path)
    try:
        os.fchmod(fd, 0o700)  # it holds private keys; on the folder we opened, not a path
    except OSError as exc:
        raise SimulatorStateError(f"{path}: cannot secure: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


LOCK_FILE = ".lock"


@contextlib.contextmanager
def _locked(path: Path, *, exclusive: bool) -> Iterator[None]:
    """flock the state folder so processes sharing it never mix two hierarchies' files.

    The folder and the lock file are both opened without following symlinks: a planted link
    must not make us create or truncate a file elsewhere.
    """
    dir_fd = _open_dir(path)
    try:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(LOCK_FILE, flags, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise SimulatorStateError(
                    f"{path / LOCK_FILE}: is a symbolic link; remove it (the simulator makes its "
                    "own lock file)"
                ) from None
            if not exclusive:  # a read-only state folder can still be read
                yield
                return
            raise SimulatorStateError(f"{path}: cannot lock: {exc.strerror or exc}") from None
    finally:
        os.close(dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------- certificates


def _name(level: str, region: str, instance_id: str) -> x509.Name:
    """Subject names in AWS's shapes and attribute orders (see the real vectors' MANIFEST)."""
    a = x509.NameAttribute
    n = NameOID
    if level == "root":
        attrs = [a(n.COUNTRY_NAME, "US"), a(n.ORGANIZATION_NAME, "Amazon"),
                 a(n.ORGANIZATIONAL_UNIT_NAME, "AWS"), a(n.COMMON_NAME, ROOT_CN)]  # fmt: skip
    elif level == "regional":
        cn = f"{secrets.token_hex(8)}.{region}.aws.nitro-enclaves"
        attrs = [a(n.COUNTRY_NAME, "US"), a(n.ORGANIZATION_NAME, "Amazon"),
                 a(n.ORGANIZATIONAL_UNIT_NAME, "AWS"), a(n.COMMON_NAME, cn)]  # fmt: skip
    elif level == "zonal":
        cn = f"{secrets.token_hex(8)}.zonal.{region}.aws.nitro-enclaves"
        attrs = [a(n.COMMON_NAME, cn), a(n.ORGANIZATIONAL_UNIT_NAME, "AWS"),
                 a(n.ORGANIZATION_NAME, "Amazon"), a(n.COUNTRY_NAME, "US"),
                 a(n.STATE_OR_PROVINCE_NAME, "WA"), a(n.LOCALITY_NAME, "Seattle")]  # fmt: skip
    else:
        cn = (
            f"{instance_id}.{region}.aws.nitro-enclaves"
            if level == "instance"
            else f"{level}.{region}.aws"  # the leaf: level carries the module id
        )
        attrs = [a(n.COUNTRY_NAME, "US"), a(n.STATE_OR_PROVINCE_NAME, "Washington"),
                 a(n.LOCALITY_NAME, "Seattle"), a(n.ORGANIZATION_NAME, "Amazon"),
                 a(n.ORGANIZATIONAL_UNIT_NAME, "AWS"), a(n.COMMON_NAME, cn)]  # fmt: skip
    return x509.Name(attrs)


def _ca_key_usage(level: str) -> x509.KeyUsage:
    # Root, regional, zonal: digitalSignature|keyCertSign|cRLSign; instance: keyCertSign only.
    full = level != "instance"
    return x509.KeyUsage(
        digital_signature=full, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=full,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


@dataclass(slots=True)
class CaLevel:
    level: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    der: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.der = self.cert.public_bytes(serialization.Encoding.DER)


def _issue_ca(
    level: str,
    issuer: CaLevel | None,
    now: dt.datetime,
    region: str,
    instance_id: str,
) -> CaLevel:
    key = ec.generate_private_key(ec.SECP384R1())
    subject = _name(level, region, instance_id)
    issuer_name = subject if issuer is None else issuer.cert.subject
    signing_key = key if issuer is None else issuer.key
    not_before = now.replace(microsecond=0)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + _LIFETIMES[level])
        .add_extension(x509.BasicConstraints(ca=True, path_length=_PATHLEN[level]), critical=True)
    )
    aki = (
        None
        if issuer is None
        else x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())
    )
    # Extension order as in real certificates.
    if level == "root":
        b = b.add_extension(ski, critical=False)
        b = b.add_extension(_ca_key_usage(level), critical=True)
    elif level in ("regional", "zonal"):
        assert aki is not None
        b = b.add_extension(aki, critical=False).add_extension(ski, critical=False)
        b = b.add_extension(_ca_key_usage(level), critical=True)
        crl = f"http://crl.{region}.nitro-enclaves.simulated.invalid/crl/{uuid.uuid4()}.crl"
        dp = x509.DistributionPoint([x509.UniformResourceIdentifier(crl)], None, None, None)
        b = b.add_extension(x509.CRLDistributionPoints([dp]), critical=False)
    else:  # instance CA: the post-2024-07 profile, which carries SKI and AKI
        assert aki is not None
        b = b.add_extension(_ca_key_usage(level), critical=True)
        b = b.add_extension(ski, critical=False).add_extension(aki, critical=False)
    return CaLevel(level, b.sign(signing_key, hashes.SHA384()), key)


def issue_leaf(
    issuer: CaLevel,
    *,
    module_id: str,
    enclave_id: int,
    region: str,
    now: dt.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A 3-hour document-signing leaf shaped like the NSM's: CA=false, no SKI/AKI."""
    key = ec.generate_private_key(ec.SECP384R1())
    not_before = now.replace(microsecond=0)
    # Real leaf serials are the enclave id in the high 64 bits and notBefore (s) in the low 64.
    serial = (enclave_id << 64) | int(not_before.timestamp())
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=True, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(module_id, region, ""))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_before + LEAF_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=False)
        .sign(issuer.key, hashes.SHA384())
    )
    return cert, key


# ---------------------------------------------------------------- the state folder


Clock = Callable[[], float]


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


class SimulatorState:
    """A loaded state folder: config plus the CA chain, renewing expiring intermediates."""

    def __init__(self, path: Path, config: SimulatorConfig, chain: dict[str, CaLevel]) -> None:
        self.path = path
        self.config = config
        self.chain = chain

    @property
    def root_pem(self) -> bytes:
        return self.chain["root"].cert.public_bytes(serialization.Encoding.PEM)

    def cabundle(self) -> list[bytes]:
        return [self.chain[level].der for level in CA_LEVELS]

    def renew(self, now: float, *, persist: bool = True) -> bool:
        """Re-issue every intermediate that would expire before a leaf issued now; say if any."""
        t = _utc(now)
        root = self.chain["root"].cert
        if root.not_valid_after_utc < t + LEAF_LIFETIME or root.not_valid_before_utc > t:
            raise SimulatorStateError(
                f"{self.path}: the simulated root is not valid now; run `sim init --force`"
            )
        renewed = False
        for parent, level in itertools.pairwise(CA_LEVELS):
            cert = self.chain[level].cert
            stale = cert.not_valid_after_utc < t + LEAF_LIFETIME or cert.not_valid_before_utc > t
            if renewed or stale:
                self.chain[level] = _issue_ca(
                    level, self.chain[parent], t, self.config.region, self.config.instance_id
                )
                if persist:
                    with _locked(self.path, exclusive=True):
                        _store_level(self.path, self.chain[level])
                renewed = True
        return renewed


def _store_level(path: Path, ca: CaLevel) -> None:
    key_pem = ca.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(path / f"{ca.level}.key", key_pem, 0o600)
    _write_atomic(path / f"{ca.level}.pem", ca.cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _load_level(path: Path, level: str) -> CaLevel:
    try:
        cert = x509.load_pem_x509_certificate(_read_capped(path / f"{level}.pem"))
        key = serialization.load_pem_private_key(_read_capped(path / f"{level}.key"), None)
    except ValueError as exc:
        if isinstance(exc, SimulatorStateError):
            raise
        raise SimulatorStateError(f"{path}/{level}: unreadable certificate or key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp384r1":
        raise SimulatorStateError(f"{path}/{level}.key: not a P-384 key")
    if key.public_key() != cert.public_key():
        raise SimulatorStateError(f"{path}/{level}.key does not belong to {level}.pem")
    return CaLevel(level, cert, key)


def state_exists(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def init_state(
    path: Path,
    config: SimulatorConfig,
    *,
    force: bool = False,
    clock: Clock | None = None,
) -> SimulatorState:
    """Create the state folder: config and a fresh CA hierarchy."""
    config.validate()
    _ensure_dir(path)
    with _locked(path, exclusive=True):
        if state_exists(path) and not force:
            raise SimulatorStateError(f"{path}: already initialised (use --force to replace it)")
        return _init_locked(path, config, _utc((clock or time.time)()))


def _init_locked(path: Path, config: SimulatorConfig, t: dt.datetime) -> SimulatorState:
    chain: dict[str, CaLevel] = {}
    parent: CaLevel | None = None
    for level in CA_LEVELS:
        parent = chain[level] = _issue_ca(level, parent, t, config.region, config.instance_id)
        _store_level(path, parent)
    body = json.dumps(config.to_json(), indent=2).encode() + b"\n"
    _write_atomic(path / CONFIG_FILE, body, 0o644)  # written last: marks the state complete
    return SimulatorState(path, config, chain)


def _check_private(path: Path) -> None:
    """The state holds CA private keys: refuse a folder another user owns or may enter, since
    they could have swapped in a state whose keys they know (checked on the folder opened)."""
    fd = _open_dir(path)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if st.st_uid != os.geteuid():
        raise SimulatorStateError(
            f"{path}: belongs to uid {st.st_uid}, not to this user: another user could have put "
            "their own CA keys there; use a state folder of your own (sim init --state DIR)"
        )
    if st.st_mode & 0o077:
        raise SimulatorStateError(
            f"{path}: mode {stat.S_IMODE(st.st_mode):04o}, but a simulator state holds CA "
            f"private keys and must be 0700 (chmod 700 {path})"
        )


def load_state(path: Path) -> SimulatorState:
    _refuse_symlink(path)
    if not path.is_dir():
        raise SimulatorStateError(f"{path}: no simulator state (run `nitro-attest sim init`)")
    _check_private(path)
    with _locked(path, exclusive=False):
        return _load_locked(path)


def _load_locked(path: Path) -> SimulatorState:
    try:
        config_data = json.loads(_read_capped(path / CONFIG_FILE))
    except ValueError as exc:
        if isinstance(exc, SimulatorStateError):
            raise
        raise SimulatorStateError(f"{path / CONFIG_FILE}: not valid JSON") from None
    config = SimulatorConfig.from_json(config_data)
    chain = {level: _load_level(path, level) for level in CA_LEVELS}
    return SimulatorState(path, config, chain)


def open_state(path: Path, *, clock: Clock | None = None) -> SimulatorState:
    """Load the state folder, creating a default one (random instance id) if there is none."""
    if not state_exists(path):
        _ensure_dir(path)
        with _locked(path, exclusive=True):
            if not state_exists(path):  # nobody else created it meanwhile
                config = SimulatorConfig(instance_id=random_instance_id())
                return _init_locked(path, config, _utc((clock or time.time)()))
    return load_state(path)
