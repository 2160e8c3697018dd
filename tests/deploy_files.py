"""The files in deploy/: the Grafana dashboard and Prometheus rules (their queries, and the metric
names in them), the Kubernetes manifests and the container build file.

`promtool` is not available, so the names are found by a small tokenizer: strings, label
matchers `{...}`, grouping clauses `by (...)` / `on (...)` etc., range selectors `[...]` and
Grafana variables are cut out; every identifier left that is not followed by `(` (a function or
an aggregation) and is not a PromQL keyword is a metric name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "nbo-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
K8S = ROOT / "deploy" / "k8s"
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
    | {"inf", "nan", "atan2", "start", "end"}
)
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)")
_LABEL_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


@dataclass(frozen=True)
class Query:
    where: str  # "dashboard panel 'Decision throughput' A", "alert NboLearnerLagging"
    expr: str


def _plain(expr: str) -> str:
    expr = _STRING.sub('""', expr)
    return _VARIABLE.sub("1m", expr)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads, as written (suffixes kept)."""
    text = _MATCHERS.sub(" ", _plain(expr))
    text = _GROUPING.sub(" ", text)
    text = _RANGE.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name = match.group(1)
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def selector_labels(expr: str) -> dict[str, set[str]]:
    """{metric name: label names its `{...}` matchers use}, for selectors written as name{...}."""
    text = _plain(expr)
    found: dict[str, set[str]] = {}
    for match in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^{}]*)\}", text):
        found.setdefault(match.group(1), set()).update(_LABEL_NAME.findall(match.group(2)))
    return found


def grouping_labels(expr: str) -> set[str]:
    """Label names in by (...), without (...), on (...), ignoring (...), group_left/right (...)."""
    return {name.strip() for body in _GROUPING.findall(_plain(expr)) for name in body.split(",") if name.strip()}


def family(name: str) -> str:
    """The name prometheus_client gives the family of a sample name."""
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def load_yaml(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return [p for p in out if p["type"] != "row"]


def queries() -> list[Query]:
    """Every PromQL expression of the dashboard and the alert rules."""
    found = [
        Query(f"dashboard panel {p['title']!r} {t['refId']}", t["expr"])
        for p in panels(load_dashboard())
        for t in p.get("targets", [])
    ]
    for group in load_yaml(ALERTS)["groups"]:
        found.extend(Query(f"alert {rule['alert']}", rule["expr"]) for rule in group["rules"])
    return found


def manifests() -> list[dict[str, Any]]:
    """Every Kubernetes object in deploy/k8s (several per file where `---` separates them)."""
    return [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None and "kind" in doc and doc["kind"] != "Kustomization"
    ]


def manifest(kind: str, name: str = "nbo") -> dict[str, Any]:
    found = [m for m in manifests() if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def deployment_container() -> dict[str, Any]:
    """The one container of the nbo Deployment."""
    (only,) = manifest("Deployment")["spec"]["template"]["spec"]["containers"]
    return only


def deployment_env() -> dict[str, str]:
    """{variable: value} of the container's literal (not secret) environment."""
    return {e["name"]: e["value"] for e in deployment_container()["env"] if "value" in e}


def instructions(path: Path = CONTAINERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
    return out
