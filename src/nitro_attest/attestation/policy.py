"""What a verified document must also satisfy: kind, PCRs, nonce, user data, public key, debug, age.

Policies are built and validated up front, so a bad expectation fails before any document is read:
an empty PCR set, an empty nonce or an unreadable measurements file is a PolicyError, never
"no constraint". A field left as None is not checked, and reports say so.
"""

from __future__ import annotations

import hmac
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from nitro_attest.attestation.caller_keys import (
    CALLER_KEY_PCR,
    MARKED_PCR_VALUE,
    signs_caller_keys,
)
from nitro_attest.attestation.document import (
    PCR_LENGTHS,
    AttestationDocument,
    DocumentKind,
)
from nitro_attest.errors import (
    CallerKeysError,
    DebugModeError,
    DocumentKindError,
    NonceMismatchError,
    PcrMismatchError,
    PolicyError,
    PublicKeyMismatchError,
    StaleDocumentError,
    UserDataMismatchError,
    VerificationError,
)
from nitro_attest.limits import MAX_PCRS, NSM_FIELD_BYTES

PcrSet = Mapping[int, bytes]
PcrSpec = Mapping[int | str, bytes | str]
MAX_MEASUREMENTS_FILE = 1024 * 1024
DEFAULT_CLOCK_SKEW = 60.0
_PCR_NAME = re.compile(r"^(?:PCR)?(\d{1,2})$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Policy:
    """Expectations on a document beyond its signature and chain.

    ``kind``: the one document kind accepted, enclave unless NitroTPM is asked for by name (both
    are signed under the AWS root, and their PCRs mean different things).
    ``pcr_sets``: the document must match every PCR of at least one set (a release and its
    successor, say). An empty tuple means PCRs are not checked.
    ``refuse_caller_keys``: the document must come from an enclave that attests only keys it
    holds (PCR16 untouched and locked, ``attestation.caller_keys``); set by every relying party
    that trusts the key a document names (the channel sender).
    """

    pcr_sets: tuple[PcrSet, ...] = ()
    nonce: bytes | None = None
    user_data: bytes | None = None
    public_key: bytes | None = None
    max_age: float | None = None
    allow_debug: bool = False
    clock_skew: float = DEFAULT_CLOCK_SKEW
    kind: DocumentKind = DocumentKind.ENCLAVE
    refuse_caller_keys: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", document_kind(self.kind))
        sets = tuple(normalize_pcr_set(s, f"PCR set {i + 1}") for i, s in enumerate(self.pcr_sets))
        object.__setattr__(self, "pcr_sets", sets)
        for name in ("nonce", "user_data", "public_key"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, bytes):
                raise PolicyError(f"{name} expectation must be bytes, got {type(value).__name__}")
            if not value:
                raise PolicyError(f"{name} expectation is empty; give the exact bytes or None")
            if len(value) > NSM_FIELD_BYTES:
                raise PolicyError(f"{name} expectation is {len(value)} bytes; a document holds "
                                  f"at most {NSM_FIELD_BYTES}")
        # As floats now: an integer beyond a float's range (10**400) passes the comparisons
        # below and raises OverflowError later, outside the project's errors.
        for name in ("max_age", "clock_skew"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                object.__setattr__(self, name, float(value))
            except (OverflowError, TypeError, ValueError):
                raise PolicyError(f"{name} must be a finite number of seconds") from None
        # Finite too: an infinite bound would pass any replayed document as fresh.
        if self.max_age is not None and not 0 < self.max_age < math.inf:
            raise PolicyError(
                f"max_age must be a positive, finite number of seconds, got {self.max_age}"
            )
        if not 0 <= self.clock_skew < math.inf:
            raise PolicyError(f"clock_skew must be finite and >= 0 seconds, got {self.clock_skew}")

    def with_nonce(self, nonce: bytes | None) -> Policy:
        """A copy expecting this nonce (None: not checked), checked like any expectation."""
        return replace(self, nonce=nonce)

    def with_public_key(self, public_key: bytes | None) -> Policy:
        """A copy expecting this public_key (None: not checked)."""
        return replace(self, public_key=public_key)

    def with_user_data(self, user_data: bytes | None) -> Policy:
        """A copy expecting this user_data (None: not checked)."""
        return replace(self, user_data=user_data)

    def with_max_age(self, max_age: float | None) -> Policy:
        """A copy accepting documents at most ``max_age`` seconds old (None: age not checked)."""
        return replace(self, max_age=max_age)

    def refusing_caller_keys(self) -> Policy:
        """A copy that refuses documents of an enclave that attests caller-chosen keys."""
        return self if self.refuse_caller_keys else replace(self, refuse_caller_keys=True)

    @classmethod
    def build(
        cls,
        *,
        expected_pcrs: PcrSpec | Sequence[PcrSpec] | None = None,
        nonce: bytes | None = None,
        user_data: bytes | None = None,
        public_key: bytes | None = None,
        max_age: float | None = None,
        allow_debug: bool = False,
        clock_skew: float = DEFAULT_CLOCK_SKEW,
        kind: DocumentKind | str = DocumentKind.ENCLAVE,
        refuse_caller_keys: bool = False,
    ) -> Policy:
        """Build from the keyword arguments ``Verifier.verify`` takes."""
        if expected_pcrs is None:
            sets: tuple[PcrSet, ...] = ()
        elif isinstance(expected_pcrs, Mapping):
            sets = (normalize_pcr_set(expected_pcrs, "expected_pcrs"),)
        else:
            sets = tuple(
                normalize_pcr_set(s, f"expected_pcrs[{i}]") for i, s in enumerate(expected_pcrs)
            )
            if not sets:
                raise PolicyError("expected_pcrs is an empty list; give at least one PCR set")
        return cls(
            sets, nonce, user_data, public_key, max_age, allow_debug, clock_skew,
            document_kind(kind), refuse_caller_keys,
        )


def document_kind(value: object) -> DocumentKind:
    """The DocumentKind named by ``value`` (the enum or its text); else a PolicyError."""
    if isinstance(value, DocumentKind):
        return value
    if isinstance(value, str):
        try:
            return DocumentKind(value.strip().lower())
        except ValueError:
            pass
    names = ", ".join(k.value for k in DocumentKind)
    raise PolicyError(f"document kind {value!r} is not one of {names}")


def normalize_pcr_set(spec: Mapping[Any, Any], what: str) -> PcrSet:
    """Turn {0: bytes, "PCR1": "hex", "2": "hex"} into {0: b, 1: b, 2: b}; reject anything odd."""
    if not isinstance(spec, Mapping):
        raise PolicyError(f"{what}: expected a mapping of PCR index to value")
    if not spec:
        raise PolicyError(f"{what}: no PCR values given (an empty expectation is not allowed)")
    out: dict[int, bytes] = {}
    for key, value in spec.items():
        index = _pcr_index(key, what)
        if index in out:
            raise PolicyError(f"{what}: PCR{index} given twice")
        out[index] = _pcr_value(value, f"{what}: PCR{index}")
    return MappingProxyType(dict(sorted(out.items())))


def _pcr_index(key: Any, what: str) -> int:
    if isinstance(key, bool):
        raise PolicyError(f"{what}: {key!r} is not a PCR index")
    if isinstance(key, int):
        index = key
    elif isinstance(key, str) and (m := _PCR_NAME.match(key.strip())):
        index = int(m.group(1))
    else:
        raise PolicyError(f"{what}: {key!r} is not a PCR name (PCR0..PCR31)")
    if not 0 <= index < MAX_PCRS:
        raise PolicyError(f"{what}: PCR index {index} outside 0..{MAX_PCRS - 1}")
    return index


def _pcr_value(value: Any, what: str) -> bytes:
    if isinstance(value, str):
        try:
            value = bytes.fromhex(value.strip())
        except ValueError:
            raise PolicyError(f"{what}: not valid hex") from None
    if not isinstance(value, bytes):
        raise PolicyError(f"{what}: expected hex text or bytes, got {type(value).__name__}")
    if len(value) not in PCR_LENGTHS:
        raise PolicyError(f"{what}: {len(value)} bytes, a PCR is 32, 48 or 64 bytes")
    return value


# What nitro-cli describe-eif prints beside "Measurements" (nitro-spec.md section 5): its output
# is accepted as a measurements file. Any other key beside "Measurements" (a PCR put outside it,
# a typo) is refused, since it would otherwise be dropped without a word.
DESCRIBE_EIF_KEYS = frozenset(
    (
        "EifVersion", "IsSigned", "SigningCertificate", "CheckCRC", "SignatureCheck",
        "ImageName", "ImageVersion", "Metadata",
    )
)


def parse_expected_measurements(text: bytes | str, source: str = "measurements") -> list[PcrSet]:
    """Parse nitro-cli's build-enclave JSON ({"Measurements": {"PCR0": hex, ...}}).

    Also accepted: a bare {"PCR0": hex, ...} object, and a JSON list of either form, each entry
    an allowed PCR set. Unknown keys inside Measurements, keys beside it and duplicate keys are
    errors (a typo must not drop a PCR); the JSON is read strictly (codec.strict_json).
    """
    # here, not at the top: verifying with no measurements file never needs it
    from nitro_attest.codec.strict_json import JsonFormatError, loads

    try:
        data = loads(text)
    except JsonFormatError as exc:
        raise PolicyError(f"{source}: {exc.message}") from None
    entries = data if isinstance(data, list) else [data]
    if not entries:
        raise PolicyError(f"{source}: empty list of measurements")
    sets: list[PcrSet] = []
    for i, entry in enumerate(entries):
        where = source if len(entries) == 1 else f"{source}[{i}]"
        if not isinstance(entry, dict):
            raise PolicyError(f"{where}: expected a JSON object")
        beside = sorted(str(k) for k in entry if k != "Measurements" and k not in DESCRIBE_EIF_KEYS)
        if "Measurements" in entry and beside:  # {"Measurements": {..}, "PCR8": ..} drops PCR8
            raise PolicyError(
                f"{where}: unexpected key(s) {', '.join(repr(k[:40]) for k in beside[:3])} beside "
                "'Measurements' (put every PCR inside it)"
            )
        sets.append(parse_measurements_object(entry.get("Measurements", entry), where))
    return sets


def parse_measurements_object(
    measurements: Any, where: str, *, tolerant: bool = False
) -> PcrSet:
    """One ``Measurements`` object ({"HashAlgorithm": ..., "PCR0": hex, ...}) as a PCR set.

    Strict (expectations a user wrote): any other key is an error, since a typo must not drop a
    PCR. ``tolerant`` (nitro-cli's own output, which may grow fields): other keys are skipped.
    """
    if not isinstance(measurements, dict):
        raise PolicyError(f"{where}: 'Measurements' must be a JSON object")
    pcrs: dict[str, Any] = {}
    for key, value in measurements.items():
        if key == "HashAlgorithm":
            if not (isinstance(value, str) and value.lower().startswith("sha384")):
                raise PolicyError(f"{where}: HashAlgorithm {value!r} is not Sha384")
            continue
        if not isinstance(key, str) or not _PCR_NAME.match(key):
            if tolerant:
                continue
            raise PolicyError(f"{where}: unexpected key {key!r} (expected PCR0..PCR31)")
        pcrs[key] = value
    return normalize_pcr_set(pcrs, where)


def load_expected_measurements(path: str | Path) -> list[PcrSet]:
    """Read and parse a measurements file (size-capped); every problem is a PolicyError."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_MEASUREMENTS_FILE + 1)
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read measurements: {exc.strerror or exc}") from None
    if len(raw) > MAX_MEASUREMENTS_FILE:
        raise PolicyError(f"{path}: larger than {MAX_MEASUREMENTS_FILE} bytes")
    if not raw.strip():
        raise PolicyError(f"{path}: empty file (an empty expectation is not allowed)")
    return parse_expected_measurements(raw, str(path))


# --- the checks: each returns a detail for the report, None when not requested, or raises ---


def check_kind(doc: AttestationDocument, policy: Policy) -> str:
    """The document is of the one kind the policy accepts (enclave or NitroTPM)."""
    if doc.kind is not policy.kind:
        raise DocumentKindError(
            f"{doc.kind.value} document (it carries {doc.pcr_field}), but the policy accepts "
            f"{policy.kind.value} documents only"
            + (" (pass --kind nitrotpm to verify a NitroTPM document)"
               if doc.kind is DocumentKind.NITROTPM else "")
        )
    return f"{doc.kind.value} document, as the policy requires"


def check_debug(doc: AttestationDocument, policy: Policy) -> str:
    """A debug-mode enclave (or an unmeasured NitroTPM boot) fails unless the policy allows it."""
    if doc.kind is DocumentKind.ENCLAVE:
        what = "debug-mode enclave (PCR0 all zero or absent)"
        good = "production enclave (PCR0 is not all zero)"
        why = "its measurements prove nothing"
    else:
        what = "NitroTPM document of an unmeasured boot (PCR0 all zero or absent)"
        good = "measured boot (NitroTPM PCR0 is not all zero)"
        why = "its PCRs prove nothing about what booted"
    if not doc.is_debug:
        return good
    if policy.allow_debug:
        return f"{what}, allowed by --allow-debug"
    raise DebugModeError(f"{what}: {why}; pass --allow-debug only for development")


def check_pcrs(doc: AttestationDocument, policy: Policy) -> str | None:
    """Every PCR of at least one of the policy's sets matches; None when no set is given."""
    if not policy.pcr_sets:
        return None
    reports: list[list[str]] = []
    for pcr_set in policy.pcr_sets:
        problems = []
        for index, expected in pcr_set.items():
            got = doc.pcrs.get(index)
            if got is None:
                problems.append(f"PCR{index}: absent from the document, expected {expected.hex()}")
            elif got != expected:
                problems.append(f"PCR{index}: got {got.hex()}, expected {expected.hex()}")
        if not problems:
            names = ", ".join(f"PCR{i}" for i in pcr_set)
            return f"{names} match" + (
                f" (allowed set {policy.pcr_sets.index(pcr_set) + 1} of {len(policy.pcr_sets)})"
                if len(policy.pcr_sets) > 1
                else ""
            )
        reports.append(problems)
    if len(reports) == 1:
        raise PcrMismatchError("; ".join(reports[0]))
    parts = [f"set {i + 1}: " + "; ".join(p) for i, p in enumerate(reports)]
    raise PcrMismatchError(f"matches none of the {len(reports)} allowed sets; " + " | ".join(parts))


def _check_field(
    name: str, got: bytes | None, expected: bytes | None, error: type[VerificationError]
) -> str | None:
    if expected is None:
        return None
    if got is None:
        raise error(f"{name}: document carries none, expected {_short(expected)}")
    if not hmac.compare_digest(got, expected):
        raise error(f"{name}: got {_short(got)}, expected {_short(expected)}")
    return f"matches ({len(expected)} bytes)"


def check_user_data(doc: AttestationDocument, policy: Policy) -> str | None:
    """The document carries exactly the expected user data; None when none is expected."""
    return _check_field("user_data", doc.user_data, policy.user_data, UserDataMismatchError)


def check_nonce(doc: AttestationDocument, policy: Policy) -> str | None:
    """The document carries exactly the expected nonce; None when none is expected."""
    return _check_field("nonce", doc.nonce, policy.nonce, NonceMismatchError)


def check_public_key(doc: AttestationDocument, policy: Policy) -> str | None:
    """The document carries exactly the expected public key; None when none is expected."""
    return _check_field("public_key", doc.public_key, policy.public_key, PublicKeyMismatchError)


def check_caller_keys(doc: AttestationDocument, policy: Policy) -> str | None:
    """Refuse a document from an enclave that may attest keys its callers chose (fails closed:
    PCR16 absent, marked or anything but untouched)."""
    if not policy.refuse_caller_keys:
        return None
    if doc.kind is DocumentKind.NITROTPM:  # its PCR16 is the TPM's resettable debug PCR
        return "NitroTPM document: signed for the instance's TPM, never by an enclave's NSM"
    pcr = f"PCR{CALLER_KEY_PCR}"
    value = doc.pcrs.get(CALLER_KEY_PCR)
    if not signs_caller_keys(doc.pcrs):
        return f"{pcr} untouched and locked: the enclave attests only keys it holds"
    if value is None:
        raise CallerKeysError(
            f"{pcr} absent: the enclave did not lock it untouched, so the key this document names "
            "may be one a caller chose (nitro-attest serve locks it at start)"
        )
    if value == MARKED_PCR_VALUE:
        raise CallerKeysError(
            f"{pcr} carries the caller-chosen-keys mark: this enclave runs serve "
            "--allow-caller-public-key, so the key this document names may be the parent's own"
        )
    raise CallerKeysError(
        f"{pcr} is {_short(value)}, not untouched: the key this document names may be one a "
        "caller chose"
    )


def check_freshness(doc: AttestationDocument, policy: Policy, at: float) -> str | None:
    """The document is at most ``max_age`` seconds old at ``at`` and not from the future
    (both with the clock skew allowed); None when no age is set."""
    if policy.max_age is None:
        return None
    age = at - doc.timestamp_ms / 1000
    if age < -policy.clock_skew:
        raise StaleDocumentError(
            f"timestamp is {-age:.0f} s in the future (allowed skew {policy.clock_skew:g} s)"
        )
    if age > policy.max_age + policy.clock_skew:
        raise StaleDocumentError(
            f"document is {age:.0f} s old, older than the allowed {policy.max_age:g} s"
        )
    return f"{max(age, 0):.0f} s old (at most {policy.max_age:g} s allowed)"


def _short(value: bytes) -> str:
    text = value.hex()
    return text if len(text) <= 96 else f"{text[:64]}... ({len(value)} bytes)"
