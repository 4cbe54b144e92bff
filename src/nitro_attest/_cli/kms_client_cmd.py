"""`nitro-attest kms decrypt | generate-data-key | generate-data-key-pair | generate-random |
derive-shared-secret | proxy`: AWS KMS from inside the enclave, with a Recipient.

Shaped like the AWS CLI: the same flags and the JSON it prints, the plaintext fields filled from
the envelope only this process's key opens. Errors: KMS's ``__type: message`` on one line, exit
1 (an envelope the key cannot open is 1 too); transport and TLS failures exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from nitro_attest._cli.common import EXIT_OK, EXIT_REJECTED, CliError, read_bytes
from nitro_attest.attestation.untrusted_text import escape_untrusted

_SETUP = """\
how the enclave reaches KMS (docs/kms.md):
  on the parent, either AWS's forwarder ...
    vsock-proxy 8000 kms.REGION.amazonaws.com 443
  ... or ours (raw forward, or HTTP CONNECT toward an allowlist):
    nitro-attest proxy --listen vsock://any:8000 --to tcp://kms.REGION.amazonaws.com:443
    nitro-attest proxy --listen vsock://any:8000 --to connect --allowlist allowlist.yaml
  in the enclave:
    nitro-attest kms decrypt --region REGION --via vsock://3:8000 --ciphertext-blob blob.bin \\
        --key-id arn:aws:kms:REGION:ACCOUNT:key/ID
    nitro-attest kms generate-data-key --region REGION --via connect+vsock://3:8000 \\
        --key-id arn:aws:kms:REGION:ACCOUNT:key/ID --key-spec AES_256 --output-file key.bin

TLS ends inside the enclave: KMS's certificate is checked against --ca-bundle (default: certifi's
bundle, baked into the image so PCR0 measures it), so the parent can neither read the request nor
answer in KMS's place. Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_SESSION_TOKEN or, with --credentials-from imds, from the instance role (IMDSv2, through
--imds-via, default the --via route if it is CONNECT); never from the command line. Name keys by
full ARN, a Decrypt too (--key-id): credentials the parent hands out could otherwise point an
alias at its own account, and a blob it planted could open under its own key; with
--credentials-from imds (or --require-key-arn) anything else is refused.
The RSA key KMS encrypts to is made in this process and never leaves it (--key-per-call: one per
call). --nsm simulator --state DIR runs the whole flow outside an enclave, against a local KMS.
"""

_OPERATIONS = {
    "decrypt": "Decrypt (the Plaintext comes back only to this enclave's key)",
    "generate-data-key": "GenerateDataKey, the Plaintext for this enclave only",
    "generate-data-key-pair": "GenerateDataKeyPair, the PrivateKeyPlaintext for this enclave only",
    "generate-random": "GenerateRandom, the bytes for this enclave only",
    "derive-shared-secret": "DeriveSharedSecret, the SharedSecret for this enclave only",
}


def add_operations(kms_sub: Any) -> None:
    """Add this group's operations to ``nitro-attest kms``."""
    for name, summary in _OPERATIONS.items():
        p = kms_sub.add_parser(name, help=summary, description=f"AWS KMS {summary}.",
                               epilog=_SETUP, formatter_class=argparse.RawDescriptionHelpFormatter)
        _operation_flags(name, p)
        _common_flags(p)
        p.add_argument("--output-file", metavar="FILE",
                       help="write the raw secret to FILE (created 0600, never overwritten, not "
                       "through a symlink) and leave it out of the JSON printed")
        p.set_defaults(func=run_operation, operation=name)
    p = kms_sub.add_parser(
        "proxy", help="in-enclave KMS endpoint for unmodified SDKs: adds the Recipient",
        description="Listen on loopback for an SDK (boto3 with endpoint_url=http://127.0.0.1:PORT "
        "and any credentials). Decrypt, GenerateDataKey, GenerateDataKeyPair, GenerateRandom and "
        "DeriveSharedSecret get a Recipient, are signed with the real credentials and sent over "
        "TLS; the answer comes back as KMS would give it, the plaintext filled in. Other "
        "operations are refused unless named with --pass-through.",
        epilog=_SETUP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--listen", required=True, metavar="127.0.0.1:PORT",
                   help="loopback address to listen on (port 0: any free port)")
    p.add_argument("--pass-through", action="append", default=[], metavar="OPERATION",
                   help="also forward this KMS operation (e.g. Encrypt), re-signed, without a "
                   "Recipient (repeatable)")
    _common_flags(p)
    p.set_defaults(func=run_proxy)


def _operation_flags(name: str, p: argparse.ArgumentParser) -> None:
    context = ("--encryption-context", dict(action="append", default=[], metavar="K=V",
               help="encryption context pair (repeatable)"))
    if name == "decrypt":
        p.add_argument("--ciphertext-blob", required=True, metavar="FILE",
                       help="the CiphertextBlob, raw bytes (fileb://FILE also accepted; - stdin)")
        p.add_argument("--key-id", metavar="ID")
        p.add_argument(context[0], **context[1])  # type: ignore[arg-type]
        p.add_argument("--encryption-algorithm", metavar="ALG")
        p.add_argument("--grant-tokens", nargs="+", metavar="TOKEN")
    elif name == "generate-data-key":
        p.add_argument("--key-id", required=True, metavar="ID")
        group = p.add_mutually_exclusive_group(required=True)
        group.add_argument("--key-spec", choices=("AES_256", "AES_128"))
        group.add_argument("--number-of-bytes", type=int, metavar="N")
        p.add_argument(context[0], **context[1])  # type: ignore[arg-type]
    elif name == "generate-data-key-pair":
        p.add_argument("--key-id", required=True, metavar="ID")
        p.add_argument("--key-pair-spec", required=True, metavar="SPEC",
                       help="RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256, ECC_NIST_P384, ...")
        p.add_argument(context[0], **context[1])  # type: ignore[arg-type]
    elif name == "generate-random":
        p.add_argument("--number-of-bytes", required=True, type=int, metavar="N")
    elif name == "derive-shared-secret":
        p.add_argument("--key-id", required=True, metavar="ID")
        p.add_argument("--public-key", required=True, metavar="FILE",
                       help="the other party's public key, SubjectPublicKeyInfo DER or PEM")
        p.add_argument("--key-agreement-algorithm", default="ECDH", metavar="ALG")


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--region", metavar="R",
                   help="AWS region (default $AWS_REGION, then $AWS_DEFAULT_REGION)")
    p.add_argument("--endpoint", metavar="URL", help="default https://kms.R.amazonaws.com")
    p.add_argument("--via", metavar="ADDR", default="direct",
                   help="vsock://3:8000 (a raw forwarder such as vsock-proxy), connect://HOST:PORT "
                   "or connect+vsock://3:8000 (HTTP CONNECT proxy), or direct (default)")
    p.add_argument("--ca-bundle", metavar="PEM",
                   help="CA certificates KMS's certificate must chain to (default certifi's)")
    p.add_argument("--insecure-http", action="store_true",
                   help="allow an http:// endpoint (a local KMS on loopback only: the parent could "
                   "read and answer every request)")
    p.add_argument("--credentials-from", choices=("env", "imds"), default="env",
                   help="env: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN (default); "
                   "imds: the instance role, IMDSv2")
    p.add_argument("--imds-via", metavar="ADDR",
                   help="the way to 169.254.169.254:80 (default: --via when it is direct or "
                   "CONNECT; a raw forwarder reaches only KMS)")
    p.add_argument("--nsm", choices=("auto", "device", "simulator"), default="auto",
                   help="auto: /dev/nsm when present, else refuse (default); simulator: the "
                   "software NSM")
    p.add_argument("--state", metavar="DIR", help="software NSM state folder (sim init --state)")
    p.add_argument("--require-key-arn", action="store_true",
                   help="every key named by full key ARN, a Decrypt too, and the answer for "
                   "that key (always on with --credentials-from imds: the parent's credentials "
                   "could resolve an alias, or a blob without --key-id, in its own account)")
    p.add_argument("--key-per-call", action="store_true",
                   help="a new RSA key for every call (default: one per process)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds for each request, connect to whole answer (default 10)")


def build_client(args: argparse.Namespace) -> tuple[Any, Any]:
    """Flags to a KmsClient and the NSM it uses (the caller closes both); every problem a
    one-line error before any socket opens."""
    from nitro_attest._cli.serve_cmd import open_nsm
    from nitro_attest.kms.client import KmsClient
    from nitro_attest.kms.credentials import ImdsCredentials, from_environment
    from nitro_attest.kms.route import parse_route

    region = args.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region:
        raise CliError("--region is required (or set AWS_REGION)")
    if args.endpoint is None and args.insecure_http:
        raise CliError("--insecure-http needs --endpoint http://... (a local KMS)")
    route = parse_route(args.via)
    if args.credentials_from == "imds":
        imds_route = parse_route(args.imds_via) if args.imds_via else route
        if imds_route.mode == "forward":
            raise CliError("--credentials-from imds: a raw forwarder reaches only KMS; give "
                           "--imds-via (a forwarder to 169.254.169.254:80, or a CONNECT proxy)")
        credentials: Any = ImdsCredentials(imds_route, timeout=args.timeout)
    else:
        credentials = from_environment()
    nsm = open_nsm(args.nsm, Path(args.state) if args.state else None)
    try:
        client = KmsClient(
            region=region, nsm=nsm, credentials=credentials, endpoint=args.endpoint,
            via=route, ca_bundle=args.ca_bundle, insecure_http=args.insecure_http,
            key_per_call=args.key_per_call, timeout=args.timeout,
            require_key_arn=True if args.require_key_arn else None,
        )
    except BaseException:
        nsm.close()
        raise
    return client, nsm


def _context(pairs: list[str]) -> dict[str, str] | None:
    context: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise CliError(f"--encryption-context {pair[:60]!r}: expected KEY=VALUE")
        if key in context:
            raise CliError(f"--encryption-context: {key[:60]!r} given twice")
        context[key] = value
    return context or None


def _file(path: str, what: str) -> bytes:
    path = path.removeprefix("fileb://")
    return read_bytes(path, limit=64 * 1024, what=what)


def _public_key(path: str) -> bytes:
    from cryptography.hazmat.primitives import serialization

    data = _file(path, "public key")
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError):
            raise CliError(f"--public-key {path}: not a PEM public key") from None
        return key.public_bytes(serialization.Encoding.DER,
                                serialization.PublicFormat.SubjectPublicKeyInfo)
    return data


def _call(client: Any, args: argparse.Namespace) -> Any:
    op = args.operation
    if op == "decrypt":
        return client.decrypt(
            _file(args.ciphertext_blob, "ciphertext blob"), key_id=args.key_id,
            encryption_context=_context(args.encryption_context),
            encryption_algorithm=args.encryption_algorithm, grant_tokens=args.grant_tokens)
    if op == "generate-data-key":
        return client.generate_data_key(
            args.key_id, key_spec=args.key_spec, number_of_bytes=args.number_of_bytes,
            encryption_context=_context(args.encryption_context))
    if op == "generate-data-key-pair":
        return client.generate_data_key_pair(
            args.key_id, args.key_pair_spec, encryption_context=_context(args.encryption_context))
    if op == "generate-random":
        return client.generate_random(args.number_of_bytes)
    return client.derive_shared_secret(
        args.key_id, _public_key(args.public_key),
        key_agreement_algorithm=args.key_agreement_algorithm)


def run_operation(args: argparse.Namespace) -> int:
    from nitro_attest.kms.client import RECIPIENT_OPERATIONS, KmsError
    from nitro_attest.kms.envelope import EnvelopeKeyError

    if args.output_file and os.path.lexists(args.output_file):
        raise CliError(f"--output-file {args.output_file}: exists (never overwritten)")
    client, nsm = build_client(args)
    try:
        result = _call(client, args)
    except (KmsError, EnvelopeKeyError) as exc:
        print(f"nitro-attest: {escape_untrusted(str(exc))}", file=sys.stderr)
        return EXIT_REJECTED
    finally:
        client.close()
        nsm.close()
    fields = dict(result.fields)
    if args.output_file:
        fields.pop(RECIPIENT_OPERATIONS[result.operation], None)
        write_secret(args.output_file, result.secret or b"")
    print(json.dumps(fields, indent=4))
    return EXIT_OK


def write_secret(path: str, secret: bytes) -> None:
    """Create ``path`` 0600, refusing an existing file or a symlink (O_EXCL|O_NOFOLLOW), and
    write the secret whole; a failed write removes the file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise CliError(f"--output-file {path}: exists (never overwritten)") from None
    except OSError as exc:
        raise CliError(f"--output-file {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)  # whatever the umask
            fh.write(secret)
    except OSError as exc:
        Path(path).unlink(missing_ok=True)
        raise CliError(f"--output-file {path}: {exc.strerror or exc}") from None


def run_proxy(args: argparse.Namespace) -> int:
    import logging
    import threading

    from nitro_attest.kms.client import RECIPIENT_OPERATIONS
    from nitro_attest.kms.sdk_proxy import KmsProxy, loopback_listen

    listen = loopback_listen(args.listen)
    for op in args.pass_through:
        if op in RECIPIENT_OPERATIONS or not op.isalpha():
            raise CliError(f"--pass-through {op[:40]!r}: not another KMS operation name")
    client, nsm = build_client(args)
    try:
        proxy = KmsProxy(client, listen, pass_through=args.pass_through)
    except BaseException:
        client.close()
        nsm.close()
        raise
    logger = logging.getLogger("nitro_attest.kms.proxy")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s",
                                           "%Y-%m-%dT%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    host, port = proxy.address
    shown = f"[{host}]" if ":" in host else host
    print(f"kms proxy listening on http://{shown}:{port} -> {client.endpoint} via {client.route}",
          file=sys.stderr, flush=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    proxy.start()
    try:
        while not stop.wait(0.5):
            pass
    finally:
        proxy.close()
        client.close()
        nsm.close()
        logger.removeHandler(handler)
    return EXIT_OK
