"""Fixtures for the Helm chart tests: the chart rendered by Helm's own engine
(``helm_python``, Helm v4 as a library, offline) and the rendered manifests parsed.

Rendering is offline, so ``lookup`` returns nothing: the admin token Secret is always
the freshly generated one. ``render`` gives the app image a tag (the chart has no default
one); ``render_as_given`` renders exactly the values it is given.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "coalmine"
ALERTS = CHART_DIR / "files" / "alerts.yaml"
HERE = Path(__file__).resolve().parent


# The newest Kubernetes version kubernetes-validate has schemas for (1.37 here).
KUBE_VERSION: str = kubernetes_validate.latest_version()
# The oldest the chart supports (Chart.yaml's kubeVersion; native sidecars are on by
# default from this version).
OLDEST_KUBE_VERSION = "1.29.0"

# The app image has no default tag: every render but the ones about that gives it one.
APP_TAG = {"app": {"image": {"tag": "1.4.2"}}}

# Kinds kubernetes-validate has no schema for: validated against the small schemas of the
# fields the chart uses, kept next to this file.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): HERE / "servicemonitor.schema.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): HERE / "prometheusrule.schema.json",
}

# Stand-in for files/alerts.yaml while its owner has not written it yet (only in a copy
# of the chart under a temporary directory, never in the chart itself).
STUB_ALERTS = """\
groups:
  - name: coalmine-stub
    rules:
      - alert: CoalmineStub
        expr: vector(0) > 0
        for: 5m
        labels: {severity: info}
        annotations: {summary: stand-in for files/alerts.yaml}
"""


@dataclass(frozen=True)
class Target:
    """Where the chart is rendered: `helm install shop --namespace llm`."""

    release: str = "shop"
    namespace: str = "llm"

    @property
    def fullname(self) -> str:
        return f"{self.release}-coalmine"


TARGET = Target()


def merged(*parts: dict[str, Any]) -> dict[str, Any]:
    """Deep merge of value overlays (later wins)."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = value
    return out


def with_app_tag(values: dict[str, Any] | None) -> dict[str, Any]:
    """``values`` with the app image tag of APP_TAG unless they set one."""
    return merged(APP_TAG, values or {})


def is_hook(manifest: dict[str, Any]) -> bool:
    annotations = manifest.get("metadata", {}).get("annotations") or {}
    return "helm.sh/hook" in annotations


@dataclass
class Rendered:
    """One rendering of the chart: the release's manifests parsed, its hooks (`helm
    test`) apart as Helm keeps them, and NOTES.txt."""

    manifests: list[dict[str, Any]]
    notes: str
    hooks: list[dict[str, Any]]

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.kinds(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    @property
    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    def container(self, name: str) -> dict[str, Any]:
        found: dict[str, Any]
        (found,) = [c for c in self.pod_spec["containers"] if c["name"] == name]
        return found

    def env(self, container: str) -> dict[str, dict[str, Any]]:
        return {e["name"]: e for e in self.container(container).get("env", [])}


def parse_manifests(rendered: dict[str, str]) -> Rendered:
    """Parse Helm's output (template path -> text) into manifests and notes."""
    documents: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        documents.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return Rendered(
        [doc for doc in documents if not is_hook(doc)],
        notes,
        [doc for doc in documents if is_hook(doc)],
    )


def validate_manifest(manifest: dict[str, Any], version: str = KUBE_VERSION) -> None:
    """Strict schema validation: built-in kinds with kubernetes-validate (the schemas of
    Kubernetes `version`), the two Prometheus Operator kinds with the chart tests' own
    schemas."""
    crd = CRD_SCHEMAS.get((manifest["apiVersion"], manifest["kind"]))
    if crd is None:
        kubernetes_validate.validate(manifest, version, strict=True)
    else:
        jsonschema.Draft202012Validator(json.loads(crd.read_text())).validate(manifest)


@pytest.fixture(scope="session")
def target() -> Target:
    return TARGET


@pytest.fixture(scope="session")
def kube_version() -> str:
    """The Kubernetes version manifests are validated against."""
    return KUBE_VERSION


@pytest.fixture(scope="session")
def alerts_file() -> Path:
    """files/alerts.yaml of the real chart (it may not exist yet: its owner writes it)."""
    return ALERTS


@pytest.fixture(scope="session")
def oldest_kube_version() -> str:
    """The oldest Kubernetes version the chart supports."""
    return OLDEST_KUBE_VERSION


@pytest.fixture(scope="session")
def validate() -> Callable[..., None]:
    """``validate(manifest, version=newest)``."""
    return validate_manifest


@pytest.fixture(scope="session")
def chart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart; a copy with a stand-in alerts file when files/alerts.yaml is missing."""
    if ALERTS.exists():
        return CHART_DIR
    copy = tmp_path_factory.mktemp("chart") / "coalmine"
    shutil.copytree(CHART_DIR, copy)
    (copy / "files" / "alerts.yaml").write_text(STUB_ALERTS)
    return copy


@pytest.fixture(scope="session")
def chart(chart_dir: Path) -> Iterator[helm.Chart]:
    with helm.Chart.load(chart_dir) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render_as_given(chart: helm.Chart) -> Callable[..., Rendered]:
    """Render the chart as `helm install shop --namespace llm` would, with `values`."""

    def _render(values: dict[str, Any] | None = None) -> Rendered:
        output = chart.render(
            values or {}, name=TARGET.release, namespace=TARGET.namespace, is_install=True
        )
        return parse_manifests(output)

    return _render


@pytest.fixture(scope="session")
def render(render_as_given: Callable[..., Rendered]) -> Callable[..., Rendered]:
    """As `render_as_given`, the app image tagged unless `values` tag it."""

    def _render(values: dict[str, Any] | None = None) -> Rendered:
        return render_as_given(with_app_tag(values))

    return _render
