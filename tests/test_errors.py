"""One error tree: every exception the project defines derives from NitroAttestError, none from
ValueError, and the CLI's exit code is read from the tree (docs/architecture.md)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import nitro_attest
from nitro_attest import errors
from nitro_attest._cli.common import exit_code_for


def _project_exceptions() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(nitro_attest.__path__, "nitro_attest."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("nitro_attest"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


EXCEPTIONS = _project_exceptions()


def test_the_walk_finds_the_tree() -> None:
    names = {cls.__name__ for cls in EXCEPTIONS}
    assert {"SignatureError", "AddressError", "CborError", "EifError", "NitroCliError"} <= names
    assert len(EXCEPTIONS) >= 30


@pytest.mark.parametrize("cls", EXCEPTIONS, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_error_is_in_the_tree(cls: type[BaseException]) -> None:
    assert issubclass(cls, errors.NitroAttestError)
    assert not issubclass(cls, ValueError), "callers would catch it with a broad ValueError"


BRANCHES = [
    errors.VerificationError,
    errors.ConfigurationError,
    errors.FormatError,
    errors.TransportError,
    errors.NsmError,
    errors.NitroCliError,
    errors.ChannelError,
]


@pytest.mark.parametrize("cls", EXCEPTIONS, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_error_sits_on_exactly_one_branch(cls: type[BaseException]) -> None:
    if cls is errors.NitroAttestError:
        return
    assert sum(issubclass(cls, b) for b in BRANCHES) == 1


def test_exit_codes_follow_the_branches() -> None:
    assert exit_code_for(errors.SignatureError("bad")) == 1
    assert exit_code_for(errors.ExpiredError("old")) == 1
    assert exit_code_for(errors.PolicyError("empty")) == 2
    assert exit_code_for(errors.NsmError("InternalError", "down")) == 2
    assert exit_code_for(errors.ChannelError("refused", reason="refused")) == 2


def test_reasons_are_enums() -> None:
    exc = errors.ChannelError("replayed", reason="replay")
    assert exc.reason is errors.ChannelFailure.REPLAY
    with pytest.raises(ValueError, match="not a valid ChannelFailure"):
        errors.ChannelError("x", reason="no-such-reason")
    assert errors.SignatureError.check is errors.Check.COSE_SIGNATURE


def test_send_secret_to_a_malformed_address_is_a_configuration_error() -> None:
    """Nothing is sent and nothing is reached: the address itself is wrong (exit 2 in the CLI)."""
    from nitro_attest import send_secret
    from nitro_attest.wire.transport import AddressError

    with pytest.raises(AddressError, match="unknown scheme") as info:
        send_secret("bogus://x", b"secret", unsafe_any_enclave=True)
    assert isinstance(info.value, errors.ConfigurationError)
    assert exit_code_for(info.value) == 2
