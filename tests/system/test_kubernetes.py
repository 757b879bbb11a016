"""The Kubernetes deployment (deploy/kubernetes): several replicas of `guard serve` over one
PostgreSQL database, checked without a cluster. The manifests must render with kustomize, ask
for what the server needs (probes on /healthz and /readyz, the database and secrets from the
`guard` secret, autoscaling bounds), and their `guard serve` arguments must parse with the
real command, so the manifests cannot drift from the CLI unnoticed."""

import shutil
import subprocess
from pathlib import Path

import click
import pytest
import typer
import yaml

from guard.cli.commands import app

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"


def manifests() -> dict[str, dict]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    documents = [yaml.safe_load((DEPLOY / name).read_text()) for name in kustomization["resources"]]
    return {doc["kind"]: doc for doc in documents}


def test_replicas_probes_and_secrets():
    docs = manifests()
    deployment, service = docs["Deployment"], docs["Service"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in container["env"]}
    assert env["GUARD_DB"]["valueFrom"]["secretKeyRef"] == {"name": "guard", "key": "database-url"}
    assert env["GUARD_THREADS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    args = container["args"]
    for option in ("--audit-secret", "--api-key-file"):
        path = args[args.index(option) + 1]
        assert str(Path(path).parent) in mounts, f"{option} {path} is not on a mounted secret"
    # the pod has time to drain: the server's shutdown timeout plus the queue and audit rows
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(args[args.index("--shutdown-timeout") + 1])


def test_autoscaling_bounds_and_disruption_budget():
    docs = manifests()
    scaler = docs["HorizontalPodAutoscaler"]["spec"]
    assert scaler["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    assert 2 <= scaler["minReplicas"] < scaler["maxReplicas"]
    assert docs["PodDisruptionBudget"]["spec"]["minAvailable"] < scaler["minReplicas"]


def test_the_serve_arguments_parse_with_the_real_command():
    (container,) = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[0] == "serve" and "--host" in args and args[args.index("--host") + 1] == "0.0.0.0"
    command = typer.main.get_command(app)
    serve = command.get_command(click.Context(command), "serve")
    context = serve.make_context("serve", list(args[1:]))  # raises on an unknown option or a bad value
    assert context.params["audit"] is True and context.params["port"] == 8000
    with pytest.raises(Exception, match="no-such-option"):  # typer's own click: its UsageError
        serve.make_context("serve", ["--no-such-option"])  # the check itself can fail


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_every_resource():
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(rendered))
    assert kinds == sorted(manifests())
    for doc in yaml.safe_load_all(rendered):
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "guard"
