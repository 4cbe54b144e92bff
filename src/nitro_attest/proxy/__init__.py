"""The parent's proxy: remote clients reach the enclave, the enclave reaches allowlisted hosts.

``nitro-attest proxy`` is the command; :class:`ProxyServer` with a :class:`ProxyConfig` is the
library form. Modules: ``hosts`` (addresses a name may not reach), ``allowlist``
(AWS vsock-proxy YAML), ``dial`` (resolve, check, connect),
``pump`` (splice data path), ``idle`` (the idle timeout's clock), ``server`` (accept, limits,
log, drain). CONNECT parsing and host syntax live in ``nitro_attest.codec``. See docs/proxy.md.
"""

from nitro_attest.proxy.allowlist import Allowlist, AllowlistError, load_allowlist
from nitro_attest.proxy.server import ProxyConfig, ProxyConfigError, ProxyServer

__all__ = [
    "Allowlist",
    "AllowlistError",
    "ProxyConfig",
    "ProxyConfigError",
    "ProxyServer",
    "load_allowlist",
]
