"""Nitro Secure Module access, for code running in an enclave.

``messages`` is the NSM API's CBOR codec (requests and responses, limits enforced), ``device``
drives /dev/nsm with one ioctl per request, ``api`` speaks the codec over any byte transport, and
``simulator/`` is the software NSM that answers the same API under a local CA. ``open_backend``
picks one; ``backend`` is the interface all of them offer.
"""

from __future__ import annotations

import os
from pathlib import Path

from nitro_attest.nsm.backend import NsmBackend, NsmDescription, NsmError, PcrDescription

__all__ = [
    "BACKEND_NAMES",
    "NsmBackend",
    "NsmDescription",
    "NsmError",
    "PcrDescription",
    "open_backend",
]

BACKEND_NAMES = ("auto", "device", "simulator")


def open_backend(name: str, *, state_dir: Path | None = None) -> NsmBackend:
    """Open an NSM backend.

    ``device``: the real /dev/nsm. ``simulator``: the software NSM whose state (CA hierarchy,
    configuration) lives in ``state_dir`` (default: ``sim_state.default_state_dir()``), created on
    first use. ``auto``: /dev/nsm when present; otherwise an NsmError pointing at
    ``--nsm simulator``: falling back silently would hand out documents no verifier should trust.
    """
    from nitro_attest.nsm import device

    if name == "auto":
        if not os.path.exists(device.DEVICE_PATH):
            raise NsmError(
                "InternalError",
                f"no {device.DEVICE_PATH}: not running inside a Nitro Enclave; "
                "pass --nsm simulator to use the software NSM",
            )
        name = "device"
    if name == "device":
        return device.open_device()
    if name == "simulator":
        from nitro_attest.nsm.simulator.nsm import SimulatedNsm
        from nitro_attest.nsm.simulator.state import default_state_dir

        return SimulatedNsm.open(state_dir if state_dir is not None else default_state_dir())
    raise ValueError(f"unknown NSM backend {name!r}; expected one of {', '.join(BACKEND_NAMES)}")
