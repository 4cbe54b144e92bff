"""`python -m nitro_attest._cli`: the `nitro-attest` command without its installed script."""

from nitro_attest._cli import entrypoint

if __name__ == "__main__":
    entrypoint()
