"""The enclave's wire: the framed CBOR protocol, its transports and both ends of it.

``protocol`` encodes and decodes frames (no I/O), ``transport`` parses vsock://, tcp:// and
unix:// addresses and opens sockets, ``server`` is the asyncio attestation server that runs in
the enclave, and ``client`` requests, saves and verifies documents from outside it.
"""
