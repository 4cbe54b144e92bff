"""The verification core: what an attestation document is and whether to believe it.

Public here: ``document`` (the payload model and AWS's syntactic rules), ``encoding`` (raw, base64
or hex input), ``policy`` (expectations and their checks), ``verifier`` (``Verifier``) and
``report`` (check results, JSON, text), ``chain`` (the pinned AWS root and chain validation).
Strict CBOR and COSE_Sign1 live in ``nitro_attest.codec``. Nothing in this package
opens a file or a socket or reads the clock on its own: callers pass bytes, roots and the time.
"""
