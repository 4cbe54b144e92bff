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


def test_kustomization_lists_every_manifest_but_no_secret() -> None:
    """A placeholder Secret in the kustomization would overwrite the real one at every apply."""
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == [p.name for p in MANIFESTS if not p.name.endswith(".example.yaml")]
    applied = [d for name in listed for d in _docs(K8S / name)]
    assert [d for d in applied if d["kind"] == "Secret"] == []


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
    assert volumes["ear-key"]["secret"]["secretName"] == "nitro-attest-ear-key"
    assert _kind("Secret", "nitro-attest-ear-key")  # its shape, in secret.example.yaml
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


def _service_container() -> dict[str, Any]:
    (container,) = _kind("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def test_policies_configmap_is_mounted_so_that_it_updates() -> None:
    container = _service_container()
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert "subPath" not in mounts["policies"]  # a subPath mount never sees an update
    folder = mounts["policies"]["mountPath"]
    assert f"--policies={folder}/policies.json" in container["args"]
    assert all("subPath" not in m for c in _all_containers() for m in c.get("volumeMounts", []))


def _all_containers() -> list[dict[str, Any]]:
    return [c for p in MANIFESTS for d in _docs(p) if d["kind"] in ("Deployment", "StatefulSet")
            for c in d["spec"]["template"]["spec"]["containers"]]  # fmt: skip


def test_probes_include_a_startup_probe_and_pods_are_scraped() -> None:
    container = _service_container()
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(container)
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30
    annotations = _kind("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == str(container["ports"][0]["containerPort"])


def test_redis_requires_a_password_that_no_command_line_carries() -> None:
    container = _service_container()
    env = {e["name"]: e for e in container.get("env", [])}
    ref = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "nitro-attest-redis", "key": "password"}
    sessions = next(a for a in container["args"] if a.startswith("--sessions="))
    assert "@" not in sessions  # no credentials in the URL on the command line
    (redis,) = _kind("StatefulSet")["spec"]["template"]["spec"]["containers"]
    redis_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in redis["env"]}
    assert redis_env["REDIS_PASSWORD"] == ref and redis_env["REDISCLI_AUTH"] == ref
    script = " ".join(redis["args"])
    assert "requirepass" in script and "exec redis-server /run/redis/redis.conf" in script
    assert "--requirepass" not in script  # the password goes to a file, not to argv
    assert _kind("Secret", "nitro-attest-redis")["stringData"]["password"].startswith("REPLACE")


def test_only_the_service_reaches_redis() -> None:
    policy = _kind("NetworkPolicy", "nitro-attest-redis")["spec"]
    redis_labels = _kind("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"] == redis_labels
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    service_labels = _kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert rule["from"] == [{"podSelector": {"matchLabels": service_labels}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
