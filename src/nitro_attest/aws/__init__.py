"""Host tooling for the parent instance on AWS: thin, typed wrappers over ``nitro-cli``.

Everything here runs a subprocess and parses its JSON or ``[ Exx ]`` errors; nothing here is
needed to verify a document.
"""
