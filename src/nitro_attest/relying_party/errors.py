"""The relying party's errors: the service unreachable or unusable, and an EAR that does not
verify."""

from __future__ import annotations

from nitro_attest.errors import TransportError


class ServiceClientError(TransportError):
    """The service could not be reached, answered with an error, or sent something unusable."""


class EarError(ServiceClientError):
    """The EAR did not verify: bad signature, wrong profile, or another session's nonce."""


class ServiceNotListeningError(ServiceClientError):
    """The service's address refused the connection: not listening (yet)."""
