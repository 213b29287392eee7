"""The chart's modes and hooks: coalmine as a native sidecar (an init container with
``restartPolicy: Always``), the controller alone (``mode: controller``: no proxy, no app,
the Role naming its HTTPRoutes), the app image without a default tag, and the ``helm
test`` Pod. Every rendering is validated strictly against the schemas of the oldest
Kubernetes the chart supports (1.29) and of the newest one."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from controller.settings import ControllerSettings
from tests.chart.conftest import merged, with_app_tag

Render = Callable[..., Any]
Rendered = Any

NATIVE = {"coalmine": {"nativeSidecar": True}}
ROUTES = ["support-agent", "support-agent-canary.v2"]
CONTROLLER = {"mode": "controller", "gatewayApi": {"httpRoutes": ROUTES}}
SWITCHES = {
    "podDisruptionBudget": {"enabled": True},
    "monitoring": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
    },
    "policies": {"existingConfigMap": "my-policies", "releaseNames": ["alpha", "beta"]},
    "adminToken": {"existingSecret": "my-admin", "key": "admin-token"},
    "coalmine": {"proxyAggregates": True, "proxyWorkers": 2},
}
BASE_KINDS = ["Deployment", "Service", "ServiceAccount", "Role", "RoleBinding", "ConfigMap"]

# id -> (values, kinds rendered, hook kinds)
MODES: dict[str, tuple[dict[str, Any], Counter[str], Counter[str]]] = {
    "native-sidecar": (
        NATIVE,
        Counter([*BASE_KINDS, "Secret"]),
        Counter(["Pod", "Service"]),
    ),
    "native-sidecar-all-switches": (
        merged(NATIVE, SWITCHES),
        Counter([*BASE_KINDS, "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"]),
        Counter(["Pod", "Service"]),
    ),
    "controller": (CONTROLLER, Counter([*BASE_KINDS, "Secret"]), Counter(["Pod"])),
    "controller-all-switches": (
        merged(CONTROLLER, SWITCHES),
        Counter([*BASE_KINDS, "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"]),
        Counter(["Pod"]),
    ),
}


@pytest.fixture(params=sorted(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def rules_for(role: dict[str, Any], resource: str) -> list[dict[str, Any]]:
    return [rule for rule in role["rules"] if resource in rule["resources"]]


def init_container(rendered: Rendered, name: str) -> dict[str, Any]:
    (found,) = [c for c in rendered.pod_spec.get("initContainers", []) if c["name"] == name]
    return dict(found)


def hook(rendered: Rendered, kind: str) -> dict[str, Any]:
    (found,) = [h for h in rendered.hooks if h["kind"] == kind]
    return dict(found)


def test_renders_the_expected_resources_and_hooks(mode: str, render: Render) -> None:
    values, kinds, hook_kinds = MODES[mode]
    rendered = render(values)
    assert Counter(m["kind"] for m in rendered.manifests) == kinds
    assert Counter(h["kind"] for h in rendered.hooks) == hook_kinds


@pytest.mark.parametrize("version", ["oldest", "newest"])
def test_every_manifest_and_hook_passes_strict_validation(
    mode: str,
    version: str,
    render: Render,
    validate: Callable[..., None],
    kube_version: str,
    oldest_kube_version: str,
) -> None:
    rendered = render(MODES[mode][0])
    for manifest in rendered.manifests + rendered.hooks:
        validate(manifest, oldest_kube_version if version == "oldest" else kube_version)


def test_lint_reports_no_warning_or_error(
    mode: str, chart_dir: Path, target: Any, kube_version: str
) -> None:
    report = helm.lint(
        chart_dir,
        with_app_tag(MODES[mode][0]),
        strict=True,
        namespace=target.namespace,
        kube_version=f"v{kube_version}",
    )
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_no_rule_of_any_role_has_empty_resource_names(mode: str, render: Render) -> None:
    # An empty resourceNames grants every object of the resource.
    for role in render(MODES[mode][0]).kinds("Role"):
        assert all(rule.get("resourceNames", ["-"]) for rule in role["rules"])


def test_every_container_runs_unprivileged_with_limits(mode: str, render: Render) -> None:
    rendered = render(MODES[mode][0])
    pods = [rendered.pod_spec, hook(rendered, "Pod")["spec"]]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["privileged"] is False
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind])


# --- native sidecar ------------------------------------------------------------------


def test_the_native_sidecar_is_an_always_restarting_init_container(render: Render) -> None:
    rendered = render(NATIVE)
    assert [c["name"] for c in rendered.pod_spec["containers"]] == ["app"]
    assert [c["name"] for c in rendered.pod_spec["initContainers"]] == ["coalmine"]
    coalmine = init_container(rendered, "coalmine")
    assert coalmine["restartPolicy"] == "Always"
    # The app container starts once the proxy accepts connections.
    assert coalmine["startupProbe"] == {
        "tcpSocket": {"port": "proxy"},
        "periodSeconds": 1,
        "timeoutSeconds": 1,
        "failureThreshold": 60,
    }
    assert coalmine["command"] + coalmine["args"] == [
        "coalmine",
        "run",
        "--policy",
        "/etc/coalmine/policies",
    ]
    assert coalmine["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert rendered.container("app")["image"] == "registry.example.com/llm-app:1.4.2"
    annotations = rendered.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["kubectl.kubernetes.io/default-container"] == "app"
    assert "native sidecar" in rendered.notes


def test_the_native_sidecar_is_the_regular_one_moved(render: Render) -> None:
    regular = render().container("coalmine")
    native = init_container(render(NATIVE), "coalmine")
    assert {k: v for k, v in native.items() if k not in ("restartPolicy", "startupProbe")} == (
        regular
    )
    assert "initContainers" not in render().pod_spec
    assert "startupProbe" not in regular and "restartPolicy" not in regular


def test_the_startup_probe_timing_is_a_value(render: Render) -> None:
    values = merged(NATIVE, {"coalmine": {"startupProbe": {"failureThreshold": 120}}})
    probe = init_container(render(values), "coalmine")["startupProbe"]
    assert probe["failureThreshold"] == 120 and probe["tcpSocket"] == {"port": "proxy"}


@pytest.fixture(scope="module")
def chart_calling_the_version_check(
    chart_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], None]:
    """Render a copy of the chart whose extra template asks the native sidecar check
    about a given Kubernetes version (Helm's offline render always says 1.36)."""
    copy = tmp_path_factory.mktemp("chart") / "coalmine"
    shutil.copytree(chart_dir, copy)
    probe = copy / "templates" / "zz-version-probe.yaml"

    def _render(version: str) -> None:
        probe.write_text(f'{{{{- include "coalmine.requireNativeSidecar" "{version}" }}}}\n')
        with helm.Chart.load(copy) as loaded:
            loaded.render(with_app_tag(NATIVE), name="shop", namespace="llm", is_install=True)

    return _render


@pytest.mark.parametrize("version", ["v1.28.9", "v1.27.0-gke.100"])
def test_a_native_sidecar_on_kubernetes_before_1_29_fails_with_a_message(
    chart_calling_the_version_check: Callable[[str], None], version: str
) -> None:
    with pytest.raises(helm.HelmRenderError) as failure:
        chart_calling_the_version_check(version)
    assert "coalmine.nativeSidecar needs Kubernetes 1.29 or newer" in str(failure.value)
    assert version in str(failure.value)
    assert "coalmine.nativeSidecar=false" in str(failure.value)


@pytest.mark.parametrize("version", ["v1.29.0", "v1.30.2-eks-1552ad0", "v1.37.0"])
def test_a_native_sidecar_on_kubernetes_1_29_or_newer_renders(
    chart_calling_the_version_check: Callable[[str], None], version: str
) -> None:
    chart_calling_the_version_check(version)


def test_the_chart_refuses_kubernetes_before_1_29(chart_dir: Path) -> None:
    meta = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
    assert meta["kubeVersion"] == ">=1.29.0-0"


# --- controller only -----------------------------------------------------------------


def test_controller_mode_runs_the_controller_alone(render_as_given: Render, target: Any) -> None:
    # No app container, so no app tag needed.
    rendered = render_as_given(CONTROLLER)
    pod = rendered.pod_spec
    assert [c["name"] for c in pod["containers"]] == ["coalmine"]
    assert "initContainers" not in pod
    coalmine = rendered.container("coalmine")
    assert coalmine["command"] + coalmine["args"] == [
        "coalmine",
        "controller",
        "--policy",
        "/etc/coalmine/policies",
    ]
    assert [p["name"] for p in coalmine["ports"]] == ["admin", "metrics"]
    assert {v["name"] for v in pod["volumes"]} == {
        "policies",
        "admin-token",
        "state",
        "coalmine-tmp",
    }
    annotations = rendered.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["kubectl.kubernetes.io/default-container"] == "coalmine"
    assert "controller runs alone" in rendered.notes and ", ".join(ROUTES) in rendered.notes


def test_controller_mode_gets_cluster_mode_and_no_proxy_settings(
    render: Render, target: Any
) -> None:
    env = render(CONTROLLER).env("coalmine")
    plain = {name: e["value"] for name, e in env.items() if "value" in e}
    assert plain["COALMINE_CLUSTER"] == "true"
    assert plain["COALMINE_LEASE_NAME"] == f"{target.fullname}-controller"
    assert plain["COALMINE_CONFIGMAP_PREFIX"] == target.fullname
    assert plain["COALMINE_ADMIN_LISTEN"] == "0.0.0.0:9465"
    assert plain["COALMINE_METRICS_LISTEN"] == "0.0.0.0:9464"
    assert env["COALMINE_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert {"COALMINE_LISTEN", "COALMINE_APP_URL", "COALMINE_AGGREGATES"}.isdisjoint(env)
    controller_settings = {f"COALMINE_{name.upper()}" for name in ControllerSettings.model_fields}
    assert {name for name in env if name.startswith("COALMINE_")} - controller_settings == set()


def test_controller_mode_serves_admin_and_metrics(render: Render) -> None:
    rendered = render(CONTROLLER)
    ports = rendered.one("Service")["spec"]["ports"]
    assert ports == [
        {"name": "admin", "port": 9465, "targetPort": "admin", "protocol": "TCP"},
        {"name": "metrics", "port": 9464, "targetPort": "metrics", "protocol": "TCP"},
    ]


def test_controller_mode_may_patch_its_httproutes_by_name_only(render: Render) -> None:
    (rule,) = rules_for(render(CONTROLLER).one("Role"), "httproutes")
    assert rule == {
        "apiGroups": ["gateway.networking.k8s.io"],
        "resources": ["httproutes"],
        "resourceNames": ROUTES,
        "verbs": ["get", "list", "watch", "patch", "update"],
    }


def test_controller_mode_keeps_the_cluster_mode_rules(render: Render) -> None:
    def without_routes(role: dict[str, Any]) -> list[dict[str, Any]]:
        return [rule for rule in role["rules"] if "httproutes" not in rule["resources"]]

    assert without_routes(render(CONTROLLER).one("Role")) == render().one("Role")["rules"]


def test_controller_mode_without_httproutes_grants_none(render_as_given: Render) -> None:
    # releases another system routes (routing.provider: none) need no route at all
    rendered = render_as_given({"mode": "controller"})
    assert rules_for(rendered.one("Role"), "httproutes") == []


def test_controller_mode_with_own_rbac_needs_no_routes(render_as_given: Render) -> None:
    rendered = render_as_given({"mode": "controller", "rbac": {"create": False}})
    assert not rendered.kinds("Role")


def test_httproutes_are_granted_in_sidecar_mode_only_when_listed(render: Render) -> None:
    assert rules_for(render().one("Role"), "httproutes") == []
    routes = {"gatewayApi": {"httpRoutes": ["support-agent"]}}
    (rule,) = rules_for(render(routes).one("Role"), "httproutes")
    assert rule["resourceNames"] == ["support-agent"]


# --- the app image tag ----------------------------------------------------------------


def test_the_app_image_has_no_default_tag(chart_dir: Path) -> None:
    defaults = yaml.safe_load((chart_dir / "values.yaml").read_text())
    assert defaults["app"]["image"]["tag"] == ""
    assert defaults["mode"] == "sidecar"
    assert defaults["coalmine"]["nativeSidecar"] is False


@pytest.mark.parametrize("values", [{}, NATIVE, {"app": {"image": {"tag": ""}}}])
def test_a_missing_app_tag_fails_with_a_message(
    render_as_given: Render, values: dict[str, Any]
) -> None:
    with pytest.raises(helm.HelmRenderError) as failure:
        render_as_given(values)
    assert "app.image.tag is required" in str(failure.value)
    assert "mode=controller" in str(failure.value)


# --- helm test -----------------------------------------------------------------------


def test_the_helm_test_pod_checks_readyz_and_the_proxy(render: Render, target: Any) -> None:
    rendered = render()
    pod = hook(rendered, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "curlimages/curl:8.11.1"
    env = {e["name"]: e["value"] for e in container["env"]}
    admin = hook(rendered, "Service")
    assert env == {
        "READYZ_URL": f"http://{admin['metadata']['name']}:9465/readyz",
        "PROXY_URL": f"http://{target.fullname}:80/",
    }
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_the_test_service_reaches_the_admin_port_while_the_test_runs(render: Render) -> None:
    rendered = render()
    service = hook(rendered, "Service")
    annotations = service["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "test"
    # Created before the Pod (lower weight), deleted after the run.
    assert int(annotations["helm.sh/hook-weight"]) < int(
        hook(rendered, "Pod")["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    deployment = rendered.one("Deployment")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [
        {"name": "admin", "port": 9465, "targetPort": "admin", "protocol": "TCP"}
    ]
    assert "admin" not in {p["name"] for p in rendered.one("Service")["spec"]["ports"]}


def test_in_controller_mode_the_test_uses_the_service(render: Render, target: Any) -> None:
    rendered = render(CONTROLLER)
    (container,) = hook(rendered, "Pod")["spec"]["containers"]
    assert container["env"] == [
        {"name": "READYZ_URL", "value": f"http://{target.fullname}:9465/readyz"}
    ]


def test_the_test_pod_is_never_selected_as_a_coalmine_pod(mode: str, render: Render) -> None:
    rendered = render(MODES[mode][0])
    labels = hook(rendered, "Pod")["metadata"]["labels"]
    selectors = [rendered.one("Service")["spec"]["selector"]] + [
        pdb["spec"]["selector"]["matchLabels"] for pdb in rendered.kinds("PodDisruptionBudget")
    ]
    assert all(not selector.items() <= labels.items() for selector in selectors)


def test_the_test_image_is_a_value_and_tests_can_be_left_out(render: Render) -> None:
    image = {"repository": "registry.example.com/curl", "tag": "8.12.0", "pullPolicy": "Always"}
    (container,) = hook(render({"tests": {"image": image}}), "Pod")["spec"]["containers"]
    assert container["image"] == "registry.example.com/curl:8.12.0"
    assert container["imagePullPolicy"] == "Always"
    assert render({"tests": {"enabled": False}}).hooks == []
    assert "helm test" not in render({"tests": {"enabled": False}}).notes
    assert "helm test shop" in render().notes


class _Answers(BaseHTTPRequestHandler):
    """/readyz: 200; anything else: 404 (an app that has no `/`)."""

    def do_GET(self) -> None:
        ready = self.path == "/readyz"
        body = b'{"status": "ready"}' if ready else b"not found"
        self.send_response(200 if ready else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def local_server() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Answers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_test_script_passes_when_readyz_is_200_and_the_proxy_answers(
    render: Render, local_server: str
) -> None:
    (container,) = hook(render(), "Pod")["spec"]["containers"]
    env = {"READYZ_URL": f"{local_server}/readyz", "PROXY_URL": f"{local_server}/"}
    done = subprocess.run(
        [*container["command"], *container["args"]],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert '{"status": "ready"}' in done.stdout
    assert "answered HTTP 404" in done.stdout


# --- values schema -------------------------------------------------------------------

GOOD_VALUES = [
    {"mode": "controller", "gatewayApi": {"httpRoutes": ["a", "b.example"]}},
    {"coalmine": {"nativeSidecar": True, "startupProbe": {"periodSeconds": 2}}},
    {"tests": {"enabled": False, "image": {"repository": "busybox", "tag": "1.37"}}},
]


@pytest.mark.parametrize("values", GOOD_VALUES)
def test_the_values_schema_accepts_the_new_values(
    chart: helm.Chart, values: dict[str, Any]
) -> None:
    chart.validate_schema(values)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"mode": "proxy"}, "/mode"),
        ({"coalmine": {"nativeSidecar": "yes"}}, "/coalmine/nativeSidecar"),
        ({"coalmine": {"startupProbe": {"periodSeconds": 0}}}, "/coalmine/startupProbe"),
        ({"gatewayApi": {"httpRoutes": ["Bad_Route"]}}, "/gatewayApi/httpRoutes/0"),
        ({"gatewayApi": {"httpRoutes": ["a", "a"]}}, "/gatewayApi/httpRoutes"),
        ({"gatewayApi": {"httpRoutes": "support-agent"}}, "/gatewayApi/httpRoutes"),
        ({"gatewayApi": {"httpRoute": ["a"]}}, "'httpRoute'"),
        ({"tests": {"enabled": "no"}}, "/tests/enabled"),
        ({"tests": {"image": {"tag": ""}}}, "/tests/image/tag"),
        ({"tests": {"resources": {"limits": None}}}, "/tests/resources"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_the_values_schema_rejects_bad_new_values(
    chart: helm.Chart, values: dict[str, Any], field: str
) -> None:
    with pytest.raises(helm.HelmValuesError) as failure:
        chart.validate_schema(values)
    assert field in str(failure.value)
