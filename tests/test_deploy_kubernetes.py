"""deploy/kubernetes validates offline against the Kubernetes schemas (kubernetes-validate), and
the service image and manifests keep the promises README makes (non-root, pinned, probes)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from nitro_attest.service.policies import parse_policies

from .paths import REPO

K8S = REPO / "deploy" / "kubernetes"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kind(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for p in MANIFESTS for d in _docs(p)
             if d["kind"] == kind and name in (None, d["metadata"]["name"])]  # fmt: skip
    assert len(found) == 1, kind
    return found[0]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid(path: Path) -> None:
    version = kubernetes_validate.utils.latest_version()
    for doc in _docs(path):
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any error


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == [p.name for p in MANIFESTS]


def test_deployment_shape() -> None:
    deploy = _kind("Deployment")
    assert deploy["spec"]["replicas"] == 3
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert "livenessProbe" in container and "httpGet" not in container["livenessProbe"]
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    args = container["args"]
    assert "--workers=1" in args
    assert any(a.startswith("--sessions=redis://nitro-attest-redis:6379/") for a in args)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["policies"]["configMap"]["name"] == _kind("ConfigMap")["metadata"]["name"]
    assert volumes["ear-key"]["secret"]["secretName"] == _kind("Secret")["metadata"]["name"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert _kind("Service", "nitro-attest")["spec"]["selector"] == labels
    assert _kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == labels
    assert _kind("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == "nitro-attest"
    assert _kind("StatefulSet")["metadata"]["name"] == "nitro-attest-redis"


def test_configmap_policies_parse_once_filled_in() -> None:
    text = _kind("ConfigMap")["data"]["policies.json"]
    with pytest.raises(Exception, match="not valid hex"):
        parse_policies(text.encode())  # the placeholders are refused, never "no constraint"
    filled = re.sub(r"REPLACE-[A-Za-z0-9-]+", "ab" * 48, text)
    policies = parse_policies(filled.encode())
    assert policies.default == "prod" and json.loads(filled)["policies"]["prod"]["max_age"] == 300


def test_service_image_is_pinned_and_non_root() -> None:
    dockerfile = (REPO / "deploy" / "service" / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE=(\S+)$", dockerfile, re.MULTILINE)
    assert base and re.fullmatch(r"[\w.:/-]+@sha256:[0-9a-f]{64}", base.group(1))
    assert re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE) == ["${BASE}", "${BASE}"]
    users = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert '"nitro-attest", "service"' in dockerfile
