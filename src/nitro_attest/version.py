"""The package's version, in a module of its own so that every layer can name it without
importing the public surface (``nitro_attest/__init__.py``) and, through it, the layers above."""

__version__ = "0.1.0"  # keep equal to pyproject.toml's [project] version (tests/test_cli_contract)
