"""The software NSM: the NSM API answered under a local CA with the real document layout.

``nsm`` holds ``SimulatedNsm``, ``state`` its on-disk CA hierarchy (a 0700 folder, 0600 keys)
and ``measurements`` the simulated image's PCRs. Its root says SIMULATED and is never trusted by
default.
"""

from nitro_attest.nsm.simulator.nsm import SimulatedNsm

__all__ = ["SimulatedNsm"]
