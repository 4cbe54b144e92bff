"""Pure formats, no I/O: strict CBOR and COSE_Sign1, host syntax, HTTP/1.1 heads (CONNECT), the
DER/BER reader, and strict JSON for configuration files. The bottom layer beside ``errors`` and
``limits``: every other package may use it, it imports nothing of the project but those two."""
