"""The local KMS: AWS KMS's JSON 1.1 API with SigV4, key policies and the Recipient flow.

A test double of AWS KMS that the real SDKs talk to unchanged (``nitro-attest kms emulator``),
so the enclave-side client, the demo and users' CI run the attested flow without AWS. Its
attestation and key-policy checks are the real thing and fail closed; its ciphertext blobs are
its own format, not AWS's. See docs/kms.md, "The local KMS (emulator)".

Layer: services (beside ``service`` and ``proxy``); it uses ``kms`` (SigV4, key policies), the
verifier and the codecs.
"""
