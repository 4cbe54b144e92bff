"""``enclave_routes``: the whole table of `serve`, built once: the NSM's routes and the channel's.

Each request type has one route. With a channel that answers ``attest`` (its documents name the
channel key), the NSM's table is built without its own ``attest`` route: said here, not done by
one dict silently overwriting another.
"""

from __future__ import annotations

from nitro_attest.channel.receiver import ChannelReceiver, channel_routes
from nitro_attest.nsm.backend import NsmBackend
from nitro_attest.wire.routes import Routes, nsm_routes


def enclave_routes(
    backend: NsmBackend,
    *,
    channel: ChannelReceiver | None = None,
    allow_caller_public_key: bool = False,
    key_in_attest: bool = True,
) -> Routes:
    """`serve`'s routes: ``attest`` and ``describe`` by ``backend``; with ``channel``, the
    attested channel's ``channel_attest`` and ``sealed_message``, and (``key_in_attest``) its
    ``attest``, whose documents name the channel key, in place of the NSM's. PCR16 is settled
    first (wire.routes.settle_caller_key_pcr): ConfigurationError or NsmError if it cannot be.
    """
    in_channel = channel is not None and key_in_attest
    routes = nsm_routes(
        backend, allow_caller_public_key=allow_caller_public_key, attest=not in_channel
    )
    if channel is None:
        return routes
    return routes + channel_routes(
        channel,
        backend,
        key_in_attest=key_in_attest,
        allow_caller_public_key=allow_caller_public_key,
    )
