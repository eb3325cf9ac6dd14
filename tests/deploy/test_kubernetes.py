"""Kubernetes manifests validate against the API schemas and agree with the image and the server."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.settings import Settings, unknown_env_settings
from tests.deploy.conftest import ROOT
from tests.deploy.metric_names import PROTOCOL_METRICS
from tests.deploy.test_dockerfile import DOCKERFILE, parse_stages

K8S = ROOT / "deploy" / "kubernetes"
# Oldest version the manifests target (preStop `sleep` is on by default from 1.30) and the newest known.
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
CUSTOM_KINDS = {("serving.kserve.io/v1beta1", "InferenceService")}


def documents() -> list[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object in deploy/kubernetes (files without apiVersion/kind, like Helm values, skipped)."""
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                found.append((path, doc))
    return found


def one(kind: str) -> dict[str, Any]:
    matches = [doc for _, doc in documents() if doc["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def setting(container: dict[str, Any], name: str) -> Any:
    """A server setting as the container sets it, else its default."""
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    return env.get(f"TANDEM_{name.upper()}", Settings.model_fields[name].default)


def drain_seconds(container: dict[str, Any]) -> float:
    return float(setting(container, "drain_timeout_s"))


def shutdown_seconds(container: dict[str, Any]) -> float:
    """preStop sleep, then tandem's grace, then its drain: what the pod needs between deletion and exit."""
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    return pre_stop + float(setting(container, "shutdown_grace_s")) + drain_seconds(container)


def pods() -> list[tuple[str, dict[str, Any]]]:
    """The pod specs tandem runs in: the Deployment's template and the InferenceService's predictor."""
    predictor = one("InferenceService")["spec"]["predictor"]
    return [("Deployment", one("Deployment")["spec"]["template"]["spec"]), ("InferenceService", predictor)]


def image_user() -> tuple[int, int]:
    user = parse_stages(DOCKERFILE.read_text())[-1].args("USER")[-1]
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def test_manifests_exist() -> None:
    kinds = {doc["kind"] for _, doc in documents()}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "InferenceService"} <= kinds
    assert (K8S / "kserve-inferenceservice.yaml").is_file()


@pytest.mark.parametrize("version", VERSIONS)
def test_builtin_kinds_validate_strictly(version: str) -> None:
    checked = 0
    for path, doc in documents():
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS or doc["apiVersion"].startswith("kustomize."):
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name} {doc['kind']}: {exc.message} at {'/'.join(map(str, exc.path))}")
        checked += 1
    assert checked >= 3


def test_validator_rejects_a_misspelt_field() -> None:
    deployment = one("Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = broken["spec"]["template"]["spec"][
        "containers"
    ][0].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_deployment_probes_gpu_and_grace() -> None:
    deployment = one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == Settings.model_fields["port"].default
    assert ports["grpc"] == Settings.model_fields["grpc_port"].default
    assert container["readinessProbe"]["grpc"] == {"port": ports["grpc"]}  # grpc.health.v1, as /v2/health/ready
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert pod["terminationGracePeriodSeconds"] > shutdown_seconds(container)
    assert unknown_env_settings({e["name"]: str(e.get("value")) for e in container.get("env", [])}) == []


def test_deployment_runs_as_the_image_user_read_only() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    uid, gid = image_user()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (uid, gid)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts


def test_service_selects_the_deployment() -> None:
    deployment, service = one("Deployment"), one("Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in port_names or isinstance(port["targetPort"], int)
    assert {p["name"] for p in service["spec"]["ports"]} == {"http", "grpc"}


def test_hpa_scales_the_deployment_on_queue_depth() -> None:
    hpa, deployment = one("HorizontalPodAutoscaler"), one("Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert name == "tandem_queue_requests"
    assert name in PROTOCOL_METRICS
    assert metric["pods"]["target"]["type"] == "AverageValue"
    adapter = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    exposed = [rule["name"]["as"] for rule in adapter["rules"]["custom"]]
    assert name in exposed, "prometheus-adapter must expose the HPA's metric"
    for rule in adapter["rules"]["custom"]:
        assert set(re.findall(r"\btandem_[a-z_]+", rule["seriesQuery"])) <= set(PROTOCOL_METRICS)


def test_kserve_inference_service_is_a_v2_custom_predictor() -> None:
    isvc, deployment = one("InferenceService"), one("Deployment")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", isvc["metadata"]["name"]), "not a DNS-1035 label"
    predictor = isvc["spec"]["predictor"]
    pod_fields = {"containers", "volumes", "terminationGracePeriodSeconds", "automountServiceAccountToken"}
    pod_fields |= {"enableServiceLinks", "securityContext", "tolerations"}
    allowed = {"minReplicas", "maxReplicas", *pod_fields}
    assert set(predictor) <= allowed, f"unexpected predictor fields {set(predictor) - allowed}"
    (container,) = predictor["containers"]
    assert predictor["terminationGracePeriodSeconds"] > shutdown_seconds(container)
    assert container["name"] == "kserve-container"
    assert container["image"] == deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    port = container["ports"][0]["containerPort"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env.get("TANDEM_PORT", Settings.model_fields["port"].default)) == port
    assert unknown_env_settings(env) == []
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port}
    assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    assert container["securityContext"]["runAsNonRoot"] is True
    mounts = {m["name"] for m in container.get("volumeMounts", [])}
    assert mounts <= {v["name"] for v in predictor.get("volumes", [])}
    # The predictor inlines a core/v1 PodSpec: validate those fields through a throwaway Pod.
    spec = {key: value for key, value in predictor.items() if key in pod_fields}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "isvc-check"}, "spec": spec}
    kubernetes_validate.validate(pod, VERSIONS[-1], strict=True)


@pytest.mark.parametrize("kind", ["Deployment", "InferenceService"])
def test_pods_start_and_stop_as_the_lifecycle_expects(kind: str) -> None:
    pod = dict(pods())[kind]
    (container,) = pod["containers"]
    assert pod["enableServiceLinks"] is False  # the server copes with them too, but they serve no purpose
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/live"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # a cold node's slow imports
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    assert pod["terminationGracePeriodSeconds"] >= shutdown_seconds(container) + 5


@pytest.mark.parametrize("kind", ["Deployment", "InferenceService"])
def test_thread_pools_are_sized_explicitly_when_there_is_no_cpu_limit(kind: str) -> None:
    (container,) = dict(pods())[kind]["containers"]
    resources = container["resources"]
    if "cpu" not in resources.get("limits", {}):  # no quota: 0 (automatic) would mean every core of the node
        assert int(setting(container, "intra_op_threads")) == int(resources["requests"]["cpu"])


def test_kustomization_lists_existing_files() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
