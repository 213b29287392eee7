"""The Helm chart in charts/coalmine, rendered by Helm's own engine (helm_python) with the
default values and with every documented switch, and every rendered manifest validated
strictly against the schemas of a current Kubernetes (kubernetes-validate; the two
Prometheus Operator kinds against tests/chart/*.schema.json)."""

from __future__ import annotations

import base64
import json
import re
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from controller.settings import ControllerSettings
from policies.loader import load_policy_text
from proxy.settings import ProxySettings
from tests.chart.conftest import with_app_tag

ROOT = Path(__file__).resolve().parents[2]
# Fixtures of conftest.py: `render(values)` returns a conftest.Rendered (manifests, notes,
# helpers); `target` says where it renders (release `shop`, namespace `llm`).
Render = Callable[..., Any]
Rendered = Any


def policy(name: str) -> str:
    """A small valid release policy whose upstream is the app container."""
    return textwrap.dedent(
        f"""\
        apiVersion: coalmine/v1
        kind: Release
        name: {name}
        target:
          upstreams: {{stable: "http://127.0.0.1:8000"}}
        steps:
          - {{weight: 10, minDuration: 10m}}
        analysis:
          metrics:
            - {{name: errors, source: error_rate, tolerance: 0.01, critical: true}}
        """
    )


# Helm drops keys set to null when it merges user values with the defaults: that is how
# the example policy of values.yaml is removed.
TWO_INLINE = {
    "policies": {
        "inline": {
            "support-agent.yaml": None,
            "alpha.yaml": policy("alpha"),
            "beta.yml": policy("beta"),
        }
    }
}
EXISTING_POLICIES = {
    "policies": {"existingConfigMap": "my-policies", "releaseNames": ["alpha", "beta"]}
}
EXISTING_SECRET = {"adminToken": {"existingSecret": "my-admin", "key": "admin-token"}}
PDB = {"podDisruptionBudget": {"enabled": True}}
PROXY_AGGREGATES = {"coalmine": {"proxyAggregates": True}}
SERVICE_MONITOR = {
    "monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}}
}
PROMETHEUS_RULE = {
    "monitoring": {"prometheusRule": {"enabled": True, "labels": {"role": "alerts"}}}
}
DASHBOARD = {
    "monitoring": {"grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "LLM"}}}
}
APP_EXTRAS = {
    "replicas": 3,
    "app": {
        "image": {
            "repository": "ghcr.io/acme/support-agent",
            "tag": "1.4.2",
            "pullPolicy": "Always",
        },
        "command": ["uvicorn"],
        "args": ["app:app", "--host", "127.0.0.1", "--port", "8000"],
        "injectLangfuseEnv": True,
        "env": [{"name": "LOG_LEVEL", "value": "info"}],
        "envFrom": [{"secretRef": {"name": "openai"}}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": "app"}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": "app"}},
        "startupProbe": {"httpGet": {"path": "/health", "port": "app"}, "failureThreshold": 30},
        "extraVolumeMounts": [{"name": "cache", "mountPath": "/cache"}],
    },
    "extraVolumes": [{"name": "cache", "emptyDir": {}}],
    "coalmine": {
        "image": {"repository": "ghcr.io/acme/coalmine", "tag": "0.1.0"},
        "langfuseProjectId": "proj-123",
        "extraEnv": [
            {
                "name": "COALMINE_WEBHOOK_URL",
                "valueFrom": {"secretKeyRef": {"name": "hooks", "key": "url"}},
            }
        ],
    },
    "service": {"type": "LoadBalancer", "port": 8000, "annotations": {"a": "b"}},
    "imagePullSecrets": [{"name": "registry"}],
    "podAnnotations": {"team": "llm"},
    "podLabels": {"tier": "backend"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "llm", "operator": "Exists", "effect": "NoSchedule"}],
    "priorityClassName": "high",
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "shop"}},
        }
    ],
}
OWN_SERVICE_ACCOUNT = {
    "serviceAccount": {"create": False, "name": "shared"},
    "rbac": {"create": False},
}


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


BASE_KINDS = [
    "Deployment",
    "Service",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "ConfigMap",
    "Secret",
]


def kinds(*, add: tuple[str, ...] = (), drop: tuple[str, ...] = ()) -> Counter[str]:
    counted = Counter(BASE_KINDS)
    counted.update(add)
    counted.subtract(drop)
    return +counted


# id -> (values, kinds rendered, release names the Role must name)
COMBINATIONS: dict[str, tuple[dict[str, Any], Counter[str], list[str]]] = {
    "defaults": ({}, kinds(), ["support-agent"]),
    "pdb": (PDB, kinds(add=("PodDisruptionBudget",)), ["support-agent"]),
    "pdb-max-unavailable": (
        {"podDisruptionBudget": {"enabled": True, "maxUnavailable": "50%"}},
        kinds(add=("PodDisruptionBudget",)),
        ["support-agent"],
    ),
    "service-monitor": (SERVICE_MONITOR, kinds(add=("ServiceMonitor",)), ["support-agent"]),
    "prometheus-rule": (PROMETHEUS_RULE, kinds(add=("PrometheusRule",)), ["support-agent"]),
    "grafana-dashboard": (DASHBOARD, kinds(add=("ConfigMap",)), ["support-agent"]),
    "existing-policies-configmap": (
        EXISTING_POLICIES,
        kinds(drop=("ConfigMap",)),
        ["alpha", "beta"],
    ),
    "existing-admin-secret": (EXISTING_SECRET, kinds(drop=("Secret",)), ["support-agent"]),
    "two-inline-policies": (TWO_INLINE, kinds(), ["alpha", "beta"]),
    "own-service-account-no-rbac": (
        OWN_SERVICE_ACCOUNT,
        kinds(drop=("ServiceAccount", "Role", "RoleBinding")),
        ["support-agent"],
    ),
    "app-extras": (APP_EXTRAS, kinds(), ["support-agent"]),
    "all-switches": (
        merged(
            PDB,
            SERVICE_MONITOR,
            PROMETHEUS_RULE,
            DASHBOARD,
            EXISTING_POLICIES,
            EXISTING_SECRET,
            PROXY_AGGREGATES,
        ),
        kinds(add=("PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"), drop=("Secret",)),
        ["alpha", "beta"],
    ),
}


@pytest.fixture(params=sorted(COMBINATIONS))
def combination(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def values(combination: str) -> dict[str, Any]:
    return COMBINATIONS[combination][0]


@pytest.fixture
def rendered(render: Render, values: dict[str, Any]) -> Rendered:
    return render(values)


def walk(node: Any) -> Iterator[Any]:
    """Every value in a nested structure, containers included."""
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


# --- every combination ---------------------------------------------------------------


def test_renders_exactly_the_expected_resources(
    combination: str, rendered: Rendered, target: Any
) -> None:
    assert Counter(m["kind"] for m in rendered.manifests) == COMBINATIONS[combination][1]
    assert all(
        m["metadata"].get("namespace", target.namespace) == target.namespace
        for m in rendered.manifests
    )


def test_every_manifest_passes_strict_schema_validation(
    rendered: Rendered, validate: Callable[[dict[str, Any]], None]
) -> None:
    for manifest in rendered.manifests + rendered.hooks:
        validate(manifest)


def test_lint_reports_no_warning_or_error(
    chart_dir: Path, values: dict[str, Any], target: Any, kube_version: str
) -> None:
    report = helm.lint(
        chart_dir,
        with_app_tag(values),
        strict=True,
        namespace=target.namespace,
        kube_version=f"v{kube_version}",
    )
    assert report["errors"] == []
    # Severity 1 is "info" (e.g. "icon is recommended"); 2 warning, 3 error.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_pods_run_unprivileged_with_a_read_only_root(rendered: Rendered) -> None:
    pod = rendered.pod_spec
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["automountServiceAccountToken"] is True
    assert "hostNetwork" not in pod and "hostPID" not in pod
    assert [c["name"] for c in pod["containers"]] == ["app", "coalmine"]
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["privileged"] is False, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context.get("runAsNonRoot", True) is True, container["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
        assert "lifecycle" not in container, "no preStop hook: coalmine drains on SIGTERM"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), (container["name"], kind)
    assert pod["terminationGracePeriodSeconds"] > 30


def test_policies_are_mounted_whole_for_hot_reload(
    rendered: Rendered, values: dict[str, Any], target: Any
) -> None:
    coalmine = rendered.container("coalmine")
    assert coalmine["command"] + coalmine["args"] == [
        "coalmine",
        "run",
        "--policy",
        "/etc/coalmine/policies",
    ]
    (mount,) = [m for m in coalmine["volumeMounts"] if m["name"] == "policies"]
    assert mount["mountPath"] == "/etc/coalmine/policies"
    for container in rendered.pod_spec["containers"]:
        assert all("subPath" not in m and "subPathExpr" not in m for m in container["volumeMounts"])
    (volume,) = [v for v in rendered.pod_spec["volumes"] if v["name"] == "policies"]
    # The chart's own ConfigMap, or the one the user names (not rendered by the chart).
    expected = values.get("policies", {}).get("existingConfigMap") or f"{target.fullname}-policies"
    assert volume["configMap"]["name"] == expected
    assert bool(values.get("policies", {}).get("existingConfigMap")) != any(
        m["metadata"]["name"] == expected for m in rendered.kinds("ConfigMap")
    )
    state = next(m for m in coalmine["volumeMounts"] if m["mountPath"] == "/var/lib/coalmine")
    assert next(v for v in rendered.pod_spec["volumes"] if v["name"] == state["name"])["emptyDir"]


def test_coalmine_gets_its_cluster_mode_settings(
    rendered: Rendered, values: dict[str, Any], target: Any
) -> None:
    env = rendered.env("coalmine")
    plain = {name: e["value"] for name, e in env.items() if "value" in e}
    assert plain["COALMINE_CLUSTER"] == "true"
    assert plain["COALMINE_LEASE_NAME"] == f"{target.fullname}-controller"
    assert plain["COALMINE_CONFIGMAP_PREFIX"] == target.fullname
    assert plain["COALMINE_STATE"] == "/var/lib/coalmine/cache.db"
    assert plain["COALMINE_LISTEN"] == "0.0.0.0:8080"
    assert plain["COALMINE_ADMIN_LISTEN"] == "0.0.0.0:9465"
    assert plain["COALMINE_METRICS_LISTEN"] == "0.0.0.0:9464"
    assert plain["LANGFUSE_BASE_URL"] == "https://cloud.langfuse.com"
    for name, field in (
        ("COALMINE_POD_NAME", "metadata.name"),
        ("COALMINE_POD_UID", "metadata.uid"),
        ("COALMINE_NAMESPACE", "metadata.namespace"),
    ):
        assert env[name]["valueFrom"] == {"fieldRef": {"fieldPath": field}}
    for name, key in (("LANGFUSE_PUBLIC_KEY", "publicKey"), ("LANGFUSE_SECRET_KEY", "secretKey")):
        assert env[name]["valueFrom"] == {"secretKeyRef": {"name": "langfuse", "key": key}}
    # The token file is the admin Secret's key, mounted read-only.
    token_key = values.get("adminToken", {}).get("key", "token")
    secret_name = (
        values.get("adminToken", {}).get("existingSecret") or f"{target.fullname}-admin-token"
    )
    (volume,) = [v for v in rendered.pod_spec["volumes"] if v["name"] == "admin-token"]
    assert volume["secret"]["secretName"] == secret_name
    mount = next(
        m for m in rendered.container("coalmine")["volumeMounts"] if m["name"] == "admin-token"
    )
    assert mount["readOnly"] is True
    assert plain["COALMINE_ADMIN_TOKEN_FILE"] == f"{mount['mountPath']}/{token_key}"
    # Langfuse keys never appear in plain text, in any container.
    for container in rendered.pod_spec["containers"]:
        for e in container.get("env", []):
            if e["name"] in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY"):
                assert "value" not in e


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def test_coalmine_probes_are_healthz_on_the_admin_port(rendered: Rendered) -> None:
    coalmine = rendered.container("coalmine")
    for probe in ("readinessProbe", "livenessProbe"):
        get = coalmine[probe]["httpGet"]
        assert get["path"] == "/healthz", "never /readyz: it fails while Langfuse is unreadable"
        assert port_number(coalmine, get["port"]) == 9465


def test_the_service_sends_traffic_through_the_proxy(rendered: Rendered) -> None:
    service = rendered.one("Service")
    coalmine = rendered.container("coalmine")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {"http", "metrics"}
    assert port_number(coalmine, ports["http"]["targetPort"]) == 8080
    assert port_number(coalmine, ports["metrics"]["targetPort"]) == 9464
    labels = rendered.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_every_resource_carries_the_standard_labels(rendered: Rendered) -> None:
    for manifest in rendered.manifests:
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "coalmine"
        assert labels["app.kubernetes.io/instance"] == "shop"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["helm.sh/chart"] == "coalmine-0.1.0"
    deployment = rendered.one("Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "coalmine", "app.kubernetes.io/instance": "shop"}
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


ALLOWED_VERBS = {
    ("", "configmaps"): {"create", "get", "update", "patch", "list", "watch", "delete"},
    ("coordination.k8s.io", "leases"): {"create", "get", "update", "patch"},
    ("", "events"): {"create", "patch"},
}


def test_the_role_grants_least_privilege(combination: str, rendered: Rendered, target: Any) -> None:
    if not rendered.kinds("Role"):
        assert not rendered.kinds("RoleBinding")
        return
    assert not rendered.kinds("ClusterRole") and not rendered.kinds("ClusterRoleBinding")
    rules = rendered.one("Role")["rules"]
    granted: dict[tuple[str, str], set[str]] = {}
    names: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "*" not in json.dumps(rule), rule
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = (group, resource)
                assert key in ALLOWED_VERBS, f"unexpected grant on {key}"
                assert set(rule["verbs"]) <= ALLOWED_VERBS[key], rule
                granted.setdefault(key, set()).update(rule["verbs"])
                if "create" in rule["verbs"]:
                    # resourceNames cannot restrict create: it would forbid it instead.
                    assert "resourceNames" not in rule, rule
                elif key == ("", "configmaps") and "delete" in rule["verbs"]:
                    # the proxies' per-minute counts, named after pods: no names to give
                    assert "resourceNames" not in rule, rule
                elif resource != "events":
                    assert rule.get("resourceNames"), f"{key} {rule['verbs']} without resourceNames"
                    names.setdefault(key, set()).update(rule["resourceNames"])
    # delete only for the leader's sweep of the proxies' counts, when they are written
    counted = rendered.env("coalmine")["COALMINE_AGGREGATES"].get("value") == "true"
    unused = set() if counted else {"delete"}
    assert granted == {key: verbs - unused for key, verbs in ALLOWED_VERBS.items()}
    assert not any(r == "secrets" for rule in rules for r in rule["resources"])

    env = {n: e.get("value") for n, e in rendered.env("coalmine").items()}
    assert names[("coordination.k8s.io", "leases")] == {env["COALMINE_LEASE_NAME"]}
    prefix = env["COALMINE_CONFIGMAP_PREFIX"]
    releases = COMBINATIONS[combination][2]
    assert names[("", "configmaps")] == {f"{prefix}-index"} | {
        f"{prefix}-{release}-{suffix}" for release in releases for suffix in ("state", "routing")
    }
    watched = {name for rule in rules if "watch" in rule["verbs"] for name in rule["resourceNames"]}
    assert watched == {f"{prefix}-{release}-routing" for release in releases}, (
        "list and watch only on the routing ConfigMaps the proxies watch"
    )
    binding = rendered.one("RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": rendered.one("Role")["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": rendered.pod_spec["serviceAccountName"],
            "namespace": target.namespace,
        }
    ]


# --- single switches -----------------------------------------------------------------


def test_inline_policies_become_the_chart_configmap(render: Render, target: Any) -> None:
    rendered = render(TWO_INLINE)
    (configmap,) = [
        c
        for c in rendered.kinds("ConfigMap")
        if c["metadata"]["name"] == f"{target.fullname}-policies"
    ]
    assert configmap["data"] == {
        "alpha.yaml": policy("alpha").rstrip("\n"),
        "beta.yml": policy("beta").rstrip("\n"),
    }


def test_the_default_policy_is_valid_and_points_at_the_app_container(
    render: Render, target: Any
) -> None:
    rendered = render()
    (configmap,) = [
        c
        for c in rendered.kinds("ConfigMap")
        if c["metadata"]["name"] == f"{target.fullname}-policies"
    ]
    app_port = rendered.container("app")["ports"][0]["containerPort"]
    for filename, text in configmap["data"].items():
        loaded = load_policy_text(text, filename)
        assert loaded.target.upstreams is not None
        assert str(loaded.target.upstreams.stable).rstrip("/") == f"http://127.0.0.1:{app_port}"


def test_the_generated_admin_token_is_random_and_mounted(render: Render, target: Any) -> None:
    first, second = render(), render()
    tokens = [base64.b64decode(r.one("Secret")["data"]["token"]).decode() for r in (first, second)]
    assert all(re.fullmatch(r"[A-Za-z0-9]{48}", t) for t in tokens)
    # Offline, lookup finds no earlier Secret, so each render draws a new token; on a
    # cluster the template reads the live Secret back and keeps its token.
    assert tokens[0] != tokens[1]
    assert first.one("Secret")["metadata"]["name"] == f"{target.fullname}-admin-token"


def test_an_existing_admin_secret_is_used_as_is(render: Render) -> None:
    rendered = render(EXISTING_SECRET)
    assert not rendered.kinds("Secret")
    (volume,) = [v for v in rendered.pod_spec["volumes"] if v["name"] == "admin-token"]
    assert volume["secret"]["secretName"] == "my-admin"
    assert volume["secret"]["items"] == [{"key": "admin-token", "path": "admin-token"}]


@pytest.mark.parametrize(
    ("pdb", "expected"),
    [
        ({}, {"minAvailable": 1}),
        ({"maxUnavailable": "50%"}, {"maxUnavailable": "50%"}),
        ({"minAvailable": 2}, {"minAvailable": 2}),
    ],
)
def test_pod_disruption_budget(
    render: Render, pdb: dict[str, Any], expected: dict[str, Any]
) -> None:
    spec = render({"podDisruptionBudget": {"enabled": True, **pdb}}).one("PodDisruptionBudget")[
        "spec"
    ]
    assert {k: v for k, v in spec.items() if k != "selector"} == expected
    assert spec["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "shop"


def test_the_service_monitor_scrapes_the_metrics_port(render: Render) -> None:
    rendered = render(SERVICE_MONITOR)
    monitor = rendered.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items()
        <= rendered.one("Service")["metadata"]["labels"].items()
    )


def test_the_prometheus_rule_carries_the_alerts_file(render: Render, alerts_file: Path) -> None:
    if not alerts_file.exists():
        pytest.skip(
            "charts/coalmine/files/alerts.yaml is not written yet (another engineer owns it)"
        )
    rule = render(PROMETHEUS_RULE).one("PrometheusRule")
    assert rule["metadata"]["labels"]["role"] == "alerts"
    alerts = yaml.safe_load(alerts_file.read_text())
    assert rule["spec"] == alerts
    assert rule["spec"]["groups"] == alerts["groups"]


def exported_metric_names() -> set[str]:
    """Names on /metrics: counters get `_total`, histograms `_bucket`, `_sum`, `_count`."""
    names: set[str] = set()
    for module in ("controller/metrics.py", "proxy/metrics.py"):
        source = (ROOT / module).read_text()
        for kind, name in re.findall(r"(\w+)\(\s*\"(coalmine_\w+)\"", source):
            if kind.lower().startswith("counter"):
                names.add(f"{name}_total")
            elif kind in ("Histogram", "HistogramMetricFamily"):
                names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
            else:
                names.add(name)
    return names


def test_the_grafana_dashboard_charts_metrics_coalmine_exports(
    render: Render, target: Any, chart_dir: Path
) -> None:
    (configmap,) = [
        c
        for c in render(DASHBOARD).kinds("ConfigMap")
        if c["metadata"]["name"] == f"{target.fullname}-dashboard"
    ]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    dashboard = json.loads(configmap["data"]["coalmine.json"])
    assert dashboard == json.loads((chart_dir / "files" / "grafana-dashboard.json").read_text())
    exprs = [e["expr"] for e in walk(dashboard) if isinstance(e, dict) and "expr" in e]
    assert len(exprs) >= 10
    used = {name for expr in exprs for name in re.findall(r"\bcoalmine_\w+", expr)}
    known = exported_metric_names()
    assert len(known) > 30
    assert used - known == set(), "dashboard queries metrics coalmine does not export"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_the_dashboard_configmap_can_go_to_grafanas_namespace(render: Render) -> None:
    rendered = render(
        {"monitoring": {"grafanaDashboard": {"enabled": True, "namespace": "grafana"}}}
    )
    (configmap,) = [
        c for c in rendered.kinds("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")
    ]
    assert configmap["metadata"]["namespace"] == "grafana"


def test_app_settings_reach_the_app_container(render: Render) -> None:
    rendered = render(APP_EXTRAS)
    app = rendered.container("app")
    assert app["image"] == "ghcr.io/acme/support-agent:1.4.2"
    assert app["command"] == ["uvicorn"] and app["args"][0] == "app:app"
    assert {"LANGFUSE_BASE_URL", "LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LOG_LEVEL"} <= set(
        rendered.env("app")
    )
    assert app["readinessProbe"]["httpGet"]["path"] == "/health"
    assert rendered.container("coalmine")["image"] == "ghcr.io/acme/coalmine:0.1.0"
    assert rendered.env("coalmine")["COALMINE_LANGFUSE_PROJECT_ID"]["value"] == "proj-123"
    assert rendered.one("Deployment")["spec"]["replicas"] == 3
    assert rendered.one("Service")["spec"]["type"] == "LoadBalancer"


def test_proxy_workers_reach_coalmine_run(render: Render) -> None:
    args = render({"coalmine": {"proxyWorkers": 4}}).container("coalmine")["args"]
    assert args == ["run", "--policy", "/etc/coalmine/policies", "--proxy-workers", "4"]
    assert "--proxy-workers" not in render().container("coalmine")["args"]


def test_the_coalmine_image_tag_defaults_to_the_app_version(render: Render) -> None:
    assert render().container("coalmine")["image"] == "coalmine:0.1.0"
    assert render().one("Deployment")["spec"]["replicas"] == 2


def test_notes_say_how_to_reach_the_dashboard_token_and_metrics(
    render: Render, target: Any
) -> None:
    notes = render().notes
    assert f"port-forward deploy/{target.fullname} 9465:9465" in notes
    assert f"get secret {target.fullname}-admin-token" in notes and "base64 -d" in notes
    assert "/metrics" in notes and "9464" in notes
    assert "/healthz" in notes and "/readyz" in notes


# --- failures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"policies": {"existingConfigMap": "my-policies"}}, "policies.releaseNames is required"),
        ({"policies": {"inline": {"support-agent.yaml": None}}}, "no release policy"),
        (
            {"policies": {"inline": {"bad.yaml": "name: [unclosed"}}},
            "policies.inline.bad.yaml is not a YAML mapping",
        ),
        (
            {"policies": {"inline": {"bad.yaml": "kind: Release\n"}}},
            "policies.inline.bad.yaml: `name` must be",
        ),
        (
            {"policies": {"inline": {"bad.yaml": "name: Not_Valid\n"}}},
            "policies.inline.bad.yaml: `name` must be",
        ),
        (
            {"policies": {"inline": {"copy.yaml": policy("support-agent")}}},
            'release "support-agent" is already defined',
        ),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name is required"),
    ],
    ids=[
        "existing-cm-without-names",
        "no-policy",
        "bad-yaml",
        "no-name",
        "bad-name",
        "duplicate",
        "no-sa-name",
    ],
)
def test_bad_settings_fail_with_a_clear_message(
    render: Render, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError) as failure:
        render(values)
    assert message in str(failure.value)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"replicas": "two"}, "/replicas"),
        ({"replica": 2}, "'replica'"),
        ({"app": {"port": 0}}, "/app/port"),
        ({"app": {"image": {"pullPolicy": "Sometimes"}}}, "/app/image/pullPolicy"),
        ({"coalmine": {"ports": {"proxy": "8080"}}}, "/coalmine/ports/proxy"),
        ({"coalmine": {"proxyWorkers": 0}}, "/coalmine/proxyWorkers"),
        ({"coalmine": {"resources": {"limits": None}}}, "/coalmine/resources"),
        ({"app": {"resources": {"requests": {"memory": None}}}}, "/app/resources/requests"),
        ({"langfuse": {"existingSecret": ""}}, "/langfuse/existingSecret"),
        ({"policies": {"inline": {"notes.txt": "x"}}}, "/policies/inline"),
        ({"policies": {"releaseNames": ["Bad_Name"]}}, "/policies/releaseNames/0"),
        ({"service": {"type": "Ingress"}}, "/service/type"),
        (
            {"monitoring": {"serviceMonitor": {"interval": "soon"}}},
            "/monitoring/serviceMonitor/interval",
        ),
        ({"monitoring": {"prometheusRule": {"enable": True}}}, "'enable'"),
        ({"podDisruptionBudget": {"minAvailable": "half"}}, "/podDisruptionBudget/minAvailable"),
        ({"terminationGracePeriodSeconds": 10}, "/terminationGracePeriodSeconds"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_the_values_schema_rejects_bad_values_naming_the_field(
    chart: helm.Chart, render: Render, values: dict[str, Any], field: str
) -> None:
    with pytest.raises(helm.HelmValuesError) as failure:
        chart.validate_schema(values)
    assert field in str(failure.value)
    with pytest.raises(helm.HelmValuesError) as failure:
        render(values)
    assert field in str(failure.value)


# --- the chart's own files -----------------------------------------------------------


def test_chart_metadata(chart_dir: Path, kube_version: str) -> None:
    meta = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["name"] == "coalmine"
    assert meta["type"] == "application"
    assert meta["version"] == "0.1.0"
    assert meta["appVersion"] == "0.1.0"
    assert meta["description"]
    low = re.fullmatch(r">=\s*(\d+)\.(\d+)\.(\d+)(-0)?", meta["kubeVersion"])
    assert low, meta["kubeVersion"]
    minimum = tuple(int(part) for part in low.groups()[:3])
    assert minimum <= tuple(int(part) for part in kube_version.split(".")), (
        "validated version must be allowed"
    )


def test_the_values_schema_is_draft_07_and_closed(chart_dir: Path) -> None:
    schema = json.loads((chart_dir / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    defaults = yaml.safe_load((chart_dir / "values.yaml").read_text())
    assert set(schema["properties"]) == set(defaults)
    for name, prop in schema["properties"].items():
        assert prop.get("description"), f"{name} has no description in the schema"


def documented_leaves(path: Path) -> Iterator[tuple[str, bool]]:
    """(key path, documented) for every leaf value of a values file: documented when a
    `# --` comment block sits right above the leaf's key or one of its ancestors' keys."""
    lines = path.read_text().splitlines()

    def commented(line: int) -> bool:
        above = line - 1
        block: list[str] = []
        while above >= 0 and lines[above].lstrip().startswith("#"):
            block.insert(0, lines[above].strip())
            above -= 1
        return bool(block) and block[0].startswith("# --")

    def visit(node: yaml.Node, prefix: str, inherited: bool) -> Iterator[tuple[str, bool]]:
        assert isinstance(node, yaml.MappingNode)
        for key, value in node.value:
            here = inherited or commented(key.start_mark.line)
            name = f"{prefix}{key.value}"
            if isinstance(value, yaml.MappingNode) and value.value:
                yield from visit(value, f"{name}.", here)
            else:
                yield name, here

    root = yaml.compose(path.read_text())
    assert root is not None
    yield from visit(root, "", False)


def test_every_value_is_commented(chart_dir: Path) -> None:
    leaves = dict(documented_leaves(chart_dir / "values.yaml"))
    assert len(leaves) > 40
    assert [name for name, documented in leaves.items() if not documented] == []


def test_every_coalmine_setting_the_chart_sets_is_one_coalmine_reads(rendered: Rendered) -> None:
    known = {
        f"COALMINE_{name.upper()}"
        for settings in (ControllerSettings, ProxySettings)
        for name in settings.model_fields
    }
    set_by_chart = {name for name in rendered.env("coalmine") if name.startswith("COALMINE_")}
    assert set_by_chart - known == set(), "the chart sets settings coalmine does not have"


def test_proxy_aggregates_widen_the_role_only_when_asked(render: Render) -> None:
    def unnamed_configmap_rules(values: dict[str, Any]) -> list[dict[str, Any]]:
        (role,) = render(values).kinds("Role")
        return [
            rule
            for rule in role["rules"]
            if "configmaps" in rule["resources"]
            and "create" not in rule["verbs"]
            and not rule.get("resourceNames")
        ]

    def aggregates_env(values: dict[str, Any]) -> str:
        (deployment,) = render(values).kinds("Deployment")
        containers = deployment["spec"]["template"]["spec"]["containers"]
        (coalmine,) = [c for c in containers if c["name"] == "coalmine"]
        (value,) = [e["value"] for e in coalmine["env"] if e["name"] == "COALMINE_AGGREGATES"]
        return str(value)

    assert unnamed_configmap_rules({}) == []
    assert aggregates_env({}) == "false"
    assert unnamed_configmap_rules(PROXY_AGGREGATES) == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "verbs": ["get", "update", "list", "delete"],
        }
    ]
    assert aggregates_env(PROXY_AGGREGATES) == "true"
