"""schemathesis against the service's own /openapi.json, in process (bounded to ~30 s):
no server errors, and every response matches the documented status, media type and schema."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from nitro_attest.service.app import ServiceConfig, create_app
from nitro_attest.service.ear import EarSigner
from nitro_attest.service.sessions import MemoryStore

from .servicekit import make_sim, write_policies


def _app() -> object:
    tmp = Path(__import__("tempfile").mkdtemp(prefix="nitro-schema-"))
    sim = make_sim(tmp / "sim")  # built at import time, for schemathesis: no fixtures yet
    config = ServiceConfig(write_policies(tmp / "policies.json"), EarSigner.generate(),
                           MemoryStore, root_pem=sim.root_pem)  # fmt: skip
    return create_app(config)


MEDIA = "application/vnd.aws.nitro-enclaves.attestation-document+cose"
schemathesis.serializer.alias(MEDIA, "application/octet-stream")
schema = schemathesis.openapi.from_asgi("/openapi.json", _app())


@schema.parametrize()
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms(case: schemathesis.Case) -> None:
    # Schema-valid but refused by meaning (nonce with nonceSize, a reused nonce, an expired
    # session) is a 4xx by design, so that one check is off; every other check runs.
    case.call_and_validate(excluded_checks=[positive_data_acceptance])


def test_schema_names_the_evidence_media_type() -> None:
    paths = schema.raw_schema["paths"]
    body = paths["/challenge-response/v1/session/{session_id}"]["post"]["requestBody"]
    assert list(body["content"]) == [MEDIA]
    assert "422" not in str(paths)
    new = paths["/challenge-response/v1/newSession"]["post"]["parameters"]
    assert {"type": "string", "enum": ["prod"]} in [p["schema"] for p in new]
