"""Attested HTTPS: TLS that ends inside the enclave, trusted once a fresh document names its key.

``front`` is the enclave's side (``nitro-attest https serve``: TLS, a reverse proxy to the app,
the attestation path); ``identity`` its key and certificate, made at start and never written;
``attest`` the client's checks; ``client`` a blocking client (``https get``); ``transport`` the
httpx transport ``AttestedTransport`` (the ``https`` extra). docs/https.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nitro_attest.https.transport import AttestedTransport

__all__ = ["AttestedTransport"]


def __getattr__(name: str) -> Any:
    # httpx is imported only by callers of the transport: the enclave's front never needs it.
    if name == "AttestedTransport":
        from nitro_attest.https.transport import AttestedTransport

        return AttestedTransport
    raise AttributeError(f"module 'nitro_attest.https' has no attribute {name!r}")
