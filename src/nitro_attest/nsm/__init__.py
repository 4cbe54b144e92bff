"""Nitro Secure Module access: the NSM API codec, the /dev/nsm device and the software simulator."""

from nitro_attest.nsm.backend import NsmBackend, NsmDescription, NsmError, PcrDescription

__all__ = ["NsmBackend", "NsmDescription", "NsmError", "PcrDescription"]
