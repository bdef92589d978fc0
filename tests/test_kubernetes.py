"""
The Kubernetes manifests in ``deploy/kubernetes``: rendered with ``kubectl kustomize`` (no
cluster), each object validated against the Kubernetes schemas (``kubernetes-validate``,
strict: an unknown field is an error), and what the deployment relies on checked.

Without ``kubectl`` the tests skip (``PUSHPROX_REQUIRE_E2E=1`` turns that into a failure).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.harness.processes import SOURCE_ROOT

pytestmark = pytest.mark.processes

MANIFESTS = SOURCE_ROOT / "deploy" / "kubernetes"
#: The oldest and the newest Kubernetes releases the manifests are checked against.
VERSIONS = ("1.29.0", kubernetes_validate.latest_version())


def kubectl() -> str:
    """The kubectl to render with (its kustomize must know ``patches``: kubectl 1.21+)."""
    found = shutil.which("kubectl")
    if found is None:
        reason = "kubectl is missing (it renders the kustomizations)"
        if os.environ.get("PUSHPROX_REQUIRE_E2E") == "1":
            pytest.fail(reason + " (PUSHPROX_REQUIRE_E2E=1)", pytrace=False)
        pytest.skip(reason)
    return found


def render(directory: Path) -> subprocess.CompletedProcess[str]:
    """``kubectl kustomize DIRECTORY``."""
    return subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True,
                          text=True, timeout=120, check=False)


def objects(directory: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The rendered objects, by kind and name; each one valid for every version."""
    done = render(directory)
    assert done.returncode == 0, done.stderr
    rendered: dict[tuple[str, str], dict[str, Any]] = {}
    for document in yaml.safe_load_all(done.stdout):
        for version in VERSIONS:
            kubernetes_validate.validate(document, version, strict=True)
        rendered[document["kind"], document["metadata"]["name"]] = document
    return rendered


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the manifests, the cluster overlay's peer token written as a user would."""
    copy = tmp_path / "kubernetes"
    shutil.copytree(MANIFESTS, copy)
    (copy / "overlays" / "cluster" / "peer-token").write_text("c2VjcmV0LXRva2Vu\n")
    return copy


def container(workload: dict[str, Any]) -> dict[str, Any]:
    """The one container of a workload's pod template."""
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return dict(only)


def env(workload: dict[str, Any]) -> dict[str, Any]:
    """The container's variables: a value, or where it comes from."""
    return {item["name"]: item.get("value", item.get("valueFrom"))
            for item in container(workload)["env"]}


def assert_unprivileged(workload: dict[str, Any]) -> None:
    """Not root, no privilege escalation, no capabilities, a read-only root."""
    pod = workload["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(workload)["securityContext"]
    assert security == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]}}
    assert container(workload)["resources"]["requests"]["memory"]


def test_base_renders_a_proxy_and_a_client_per_node(tree: Path) -> None:
    """The proxy with its probes and Service; the clients on the host network by node name."""
    rendered = objects(tree / "base")
    assert sorted(rendered) == [("DaemonSet", "pushprox-client"), ("Deployment", "pushprox"),
                                ("Service", "pushprox")]
    proxy = rendered["Deployment", "pushprox"]
    probes = container(proxy)
    assert probes["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http"}
    assert probes["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http"}
    assert env(proxy)["PUSHPROX_LISTEN"] == "tcp:8080"
    assert_unprivileged(proxy)

    client = rendered["DaemonSet", "pushprox-client"]
    pod = client["spec"]["template"]["spec"]
    assert (pod["hostNetwork"], pod["dnsPolicy"]) == (True, "ClusterFirstWithHostNet")
    variables = env(client)
    assert variables["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert variables["PUSHPROX_FQDN"] == "$(NODE_NAME)"
    assert variables["PUSHPROX_PROXY_URL"] == "http://pushprox:8080/"
    assert_unprivileged(client)

    service = rendered["Service", "pushprox"]
    assert service["spec"]["selector"] == proxy["spec"]["selector"]["matchLabels"]


def test_cluster_overlay_adds_replicas_redis_peers_and_the_token(tree: Path) -> None:
    """Three replicas on one Redis, each its pod IP as peer URL, the token from a Secret."""
    rendered = objects(tree / "overlays" / "cluster")
    secrets = [name for kind, name in rendered if kind == "Secret"]
    assert len(secrets) == 1 and secrets[0].startswith("pushprox-peer-token-"), secrets
    proxy = rendered["Deployment", "pushprox"]
    assert proxy["spec"]["replicas"] == 3
    variables = env(proxy)
    assert variables["PUSHPROX_REDIS"] == "redis://pushprox-redis:6379/0"
    assert variables["PUSHPROX_PEER_URL"] == "http://$(POD_IP):8080"
    assert variables["PUSHPROX_LISTEN"] == "tcp:8080"  # the base's, kept
    names = [item["name"] for item in container(proxy)["env"]]
    assert names.index("POD_IP") < names.index("PUSHPROX_PEER_URL")  # $(POD_IP) expands
    (volume,) = proxy["spec"]["template"]["spec"]["volumes"]
    assert volume["secret"]["secretName"] == secrets[0]
    assert_unprivileged(proxy)

    peers = rendered["Service", "pushprox-peers"]
    assert peers["spec"]["clusterIP"] == "None"
    redis_port = rendered["Service", "pushprox-redis"]["spec"]["ports"][0]["port"]
    assert redis_port == 6379
    assert_unprivileged(rendered["Deployment", "pushprox-redis"])
    assert ("DaemonSet", "pushprox-client") in rendered


def test_cluster_overlay_wants_a_token_of_the_user(tmp_path: Path) -> None:
    """No token ships: without the file the overlay does not render."""
    copy = tmp_path / "kubernetes"
    shutil.copytree(MANIFESTS, copy)
    (copy / "overlays" / "cluster" / "peer-token").unlink(missing_ok=True)
    done = render(copy / "overlays" / "cluster")
    assert done.returncode != 0
    assert "peer-token" in done.stderr
