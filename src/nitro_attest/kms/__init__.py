"""AWS KMS from inside the enclave: the Recipient flow (attestation document in, CMS envelope out).

Layer: beside ``channel`` (it uses the NSM, the wire transports and the codecs, nothing above).
See docs/kms.md.
"""
