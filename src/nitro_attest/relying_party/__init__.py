"""The relying party: asks a verification service to appraise an enclave's document and trusts
the EAR it returns only under a pinned key.

Needs the ``service`` extra (PyJWT). Modules: ``client`` (``ServiceClient``, the challenge-response
session ``request_appraisal``), ``ear_check`` (pinned keys, ``verify_ear``), ``errors``. The
service itself is ``nitro_attest.service``; the two share only the EAR format.
"""
