"""The verification core: what an attestation document is and whether to believe it.

Public here: ``document`` (the payload model and AWS's syntactic rules), ``encoding`` (raw, base64
or hex input), ``policy`` (expectations and their checks), ``verifier`` (``Verifier``) and
``report`` (check results, JSON, text). Private: ``_cbor`` (strict CBOR), ``_cose`` (COSE_Sign1
and ECDSA) and ``_chain`` (the pinned AWS root and chain validation). Nothing in this package
opens a file or a socket or reads the clock on its own: callers pass bytes, roots and the time.
"""
