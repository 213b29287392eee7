"""HTTPRoutes (gateway.networking.k8s.io/v1) on the fake Kubernetes API server, through
the official client's ``CustomObjectsApi``: the verbs, optimistic concurrency, pruning,
defaulting, generation and status, and validation against the Gateway API CRD's schema
and CEL rules with the real server's 422s.

The routes coalmine writes come in three shapes: weighted stable/canary backendRefs; the
same plus a RequestMirror filter to a staging Service; and, for a prompt-only release,
two backendRefs to one Service, each with a RequestHeaderModifier naming its arm.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.fakes.kube_api import FakeKubeServer
from tests.fakes.kube_api.resources import HTTPROUTES, HTTPROUTES_CRD

GROUP, VERSION, PLURAL = "gateway.networking.k8s.io", "v1", "httproutes"
NS = "shop"
JSON_PATCH = "application/json-patch+json"
CEL_SKIPPED = (
    '<nil>: Invalid value: "null": some validation rules were not checked because the '
    "object was invalid; correct the existing errors to complete validation"
)


def test_the_crd_is_found_beside_the_repository() -> None:
    assert HTTPROUTES_CRD.is_file(), HTTPROUTES_CRD
    assert HTTPROUTES is not None


@pytest.fixture
def routes(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


# -- the routes coalmine writes -----------------------------------------------------------


def backend(name: str, weight: int | None = None, **extra: Any) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": name, "port": 8080, **extra}
    if weight is not None:
        ref["weight"] = weight
    return ref


def header_arm(arm: str, label: str) -> dict[str, Any]:
    return {
        "type": "RequestHeaderModifier",
        "requestHeaderModifier": {
            "set": [
                {"name": "x-coalmine-arm", "value": arm},
                {"name": "x-coalmine-prompt-label", "value": label},
            ]
        },
    }


def mirror(name: str = "agent-staging", **config: Any) -> dict[str, Any]:
    return {
        "type": "RequestMirror",
        "requestMirror": {"backendRef": {"name": name, "port": 8080}, **config},
    }


def route(name: str = "agent", *rules: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HTTPRoute",
        "metadata": {
            "name": name,
            "annotations": {"coalmine.dev/owned-rules": "canary"},
        },
        "spec": {
            "parentRefs": [{"name": "gateway", "namespace": "infra"}],
            "hostnames": ["agent.example.com"],
            "rules": list(rules) or [weighted()],
        },
    }


def weighted(stable: int = 90, canary: int = 10) -> dict[str, Any]:
    return {
        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
        "backendRefs": [backend("agent-stable", stable), backend("agent-canary", canary)],
    }


def weighted_with_mirror() -> dict[str, Any]:
    return {**weighted(), "filters": [mirror(percent=25)]}


def prompt_arms() -> dict[str, Any]:
    return {
        "backendRefs": [
            backend("agent", 90, filters=[header_arm("stable", "production")]),
            backend("agent", 10, filters=[header_arm("canary", "candidate")]),
        ]
    }


# -- helpers ------------------------------------------------------------------------------


def create(routes: client.CustomObjectsApi, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    made: dict[str, Any] = routes.create_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, body, **kw
    )
    return made


def get(routes: client.CustomObjectsApi, name: str = "agent") -> dict[str, Any]:
    found: dict[str, Any] = routes.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
    return found


def failure(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(ApiException) as caught:
        call(*args, **kwargs)
    body: dict[str, Any] = json.loads(caught.value.body)
    assert body["kind"] == "Status" and body["code"] == caught.value.status
    return int(caught.value.status), body


def rejected(routes: client.CustomObjectsApi, body: dict[str, Any]) -> dict[str, Any]:
    """The 422 a create of ``body`` gets; nothing is stored."""
    code, status = failure(create, routes, body)
    assert code == 422 and status["reason"] == "Invalid", status
    details = status["details"]
    assert (details["group"], details["kind"], details["name"]) == (
        GROUP,
        "HTTPRoute",
        body["metadata"]["name"],
    )
    assert status["message"].startswith(
        f'HTTPRoute.{GROUP} "{body["metadata"]["name"]}" is invalid: '
    )
    with pytest.raises(ApiException):
        get(routes, body["metadata"]["name"])
    return status


def causes(status: dict[str, Any]) -> list[str]:
    """Each cause as the server words it in the message: ``field: message``."""
    return [f"{c['field']}: {c['message']}" for c in status["details"]["causes"]]


def broken(change: Callable[[dict[str, Any]], object], *rules: dict[str, Any]) -> dict[str, Any]:
    body = route("agent", *[copy.deepcopy(r) for r in rules])
    change(body["spec"])
    return body


# -- the verbs ----------------------------------------------------------------------------


def test_create_get_list_replace_patch_delete(routes: client.CustomObjectsApi) -> None:
    made = create(routes, route())
    meta = made["metadata"]
    assert (made["apiVersion"], made["kind"]) == (f"{GROUP}/{VERSION}", "HTTPRoute")
    assert meta["namespace"] == NS and meta["generation"] == 1 and meta["uid"]
    assert made["spec"]["rules"][0]["backendRefs"][1]["weight"] == 10
    assert get(routes) == made

    listed = routes.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL)
    assert listed["kind"] == "HTTPRouteList" and listed["apiVersion"] == f"{GROUP}/{VERSION}"
    assert [item["metadata"]["name"] for item in listed["items"]] == ["agent"]
    everywhere = routes.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    assert len(everywhere["items"]) == 1

    made["spec"]["rules"][0]["backendRefs"][0]["weight"] = 50
    made["spec"]["rules"][0]["backendRefs"][1]["weight"] = 50
    replaced = routes.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "agent", made)
    assert int(replaced["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert replaced["metadata"]["generation"] == 2

    merged = routes.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "agent", {"spec": {"hostnames": ["shop.example.com"]}}
    )
    assert merged["spec"]["hostnames"] == ["shop.example.com"]
    assert merged["spec"]["rules"] == replaced["spec"]["rules"]
    patched = routes.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        PLURAL,
        "agent",
        [{"op": "replace", "path": "/spec/rules/0/backendRefs/1/weight", "value": 0}],
        _content_type=JSON_PATCH,
    )
    assert patched["spec"]["rules"][0]["backendRefs"][1]["weight"] == 0
    assert patched["metadata"]["generation"] == 4

    deleted = routes.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "agent")
    assert deleted["status"] == "Success" and deleted["details"]["uid"] == meta["uid"]
    assert failure(get, routes)[0] == 404


def test_a_stale_resource_version_conflicts(routes: client.CustomObjectsApi) -> None:
    stale = create(routes, route())
    routes.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "agent", {"metadata": {"labels": {"release": "r1"}}}
    )
    code, status = failure(
        routes.replace_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, "agent", stale
    )
    assert code == 409 and status["reason"] == "Conflict"
    assert status["message"] == (
        f'Operation cannot be fulfilled on httproutes.{GROUP} "agent": the object has been '
        "modified; please apply your changes to the latest version and try again"
    )
    unconditional = copy.deepcopy(stale)
    del unconditional["metadata"]["resourceVersion"]
    code, status = failure(
        routes.replace_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, "agent", unconditional
    )
    assert code == 422
    assert causes(status) == [
        "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
    ]


def test_missing_routes_are_404(routes: client.CustomObjectsApi) -> None:
    for call, args in (
        (routes.get_namespaced_custom_object, ()),
        (routes.delete_namespaced_custom_object, ()),
        (routes.patch_namespaced_custom_object, ({"spec": {}},)),
        (routes.replace_namespaced_custom_object, (route("ghost"),)),
    ):
        code, status = failure(call, GROUP, VERSION, NS, PLURAL, "ghost", *args)
        assert code == 404 and status["reason"] == "NotFound"
        assert status["message"] == f'httproutes.{GROUP} "ghost" not found'
        assert status["details"] == {"name": "ghost", "group": GROUP, "kind": "httproutes"}


def test_a_second_create_already_exists(routes: client.CustomObjectsApi) -> None:
    create(routes, route())
    code, status = failure(create, routes, route())
    assert code == 409 and status["reason"] == "AlreadyExists"


def test_strategic_merge_patch_is_not_for_custom_resources(
    routes: client.CustomObjectsApi,
) -> None:
    create(routes, route())
    code, status = failure(
        routes.patch_namespaced_custom_object,
        GROUP,
        VERSION,
        NS,
        PLURAL,
        "agent",
        {"spec": {}},
        _content_type="application/strategic-merge-patch+json",
    )
    assert code == 415 and status["reason"] == "UnsupportedMediaType"


def test_watch_sees_the_changes(routes: client.CustomObjectsApi) -> None:
    made = create(routes, route())
    routes.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "agent", {"spec": {"hostnames": ["b.example.com"]}}
    )
    routes.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "agent")
    watcher = watch.Watch()
    seen = []
    for event in watcher.stream(
        routes.list_namespaced_custom_object,
        GROUP,
        VERSION,
        NS,
        PLURAL,
        resource_version=made["metadata"]["resourceVersion"],
        timeout_seconds=10,
    ):
        seen.append((event["type"], event["object"]["spec"]["hostnames"]))
        if event["type"] == "DELETED":
            watcher.stop()
    assert seen == [("MODIFIED", ["b.example.com"]), ("DELETED", ["b.example.com"])]


def test_discovery_lists_httproutes_and_their_status(api: client.ApiClient) -> None:
    groups = client.ApisApi(api).get_api_versions()
    assert GROUP in [group.name for group in groups.groups]
    listed = client.CustomObjectsApi(api).get_api_resources(GROUP, VERSION)
    assert [(r.name, r.kind, r.namespaced) for r in listed.resources] == [
        ("httproutes", "HTTPRoute", True),
        ("httproutes/status", "HTTPRoute", True),
    ]
    assert listed.resources[0].categories == ["gateway-api"]


def test_status_is_the_only_subresource(
    kube: FakeKubeServer, routes: client.CustomObjectsApi
) -> None:
    create(routes, route())
    base = f"{kube.url}/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}/agent"
    pool = kube.api_client().rest_client.pool_manager
    headers = {"Authorization": f"Bearer {kube.token}"}
    assert pool.request("GET", f"{base}/status", headers=headers).status == 200
    assert pool.request("DELETE", f"{base}/status", headers=headers).status == 405
    assert pool.request("GET", f"{base}/scale", headers=headers).status == 404
    core = f"{kube.url}/api/v1/namespaces/{NS}/configmaps/agent/status"
    assert pool.request("GET", core, headers=headers).status == 404


# -- what the server does to a body -------------------------------------------------------


def test_defaults_are_applied(routes: client.CustomObjectsApi) -> None:
    bare = route("agent", {"backendRefs": [{"name": "agent-stable", "port": 8080}]})
    bare["spec"]["parentRefs"] = [{"name": "gateway"}]
    bare["spec"]["rules"].append({"filters": [mirror(fraction={"numerator": 1})]})
    bare["spec"]["rules"].append(
        {"matches": [{"headers": [{"name": "x-coalmine-arm", "value": "canary"}]}]}
    )
    spec = create(routes, bare)["spec"]
    assert spec["parentRefs"] == [
        {"name": "gateway", "group": GROUP, "kind": "Gateway"},
    ]
    first, second, third = spec["rules"]
    assert first["backendRefs"] == [
        {"name": "agent-stable", "port": 8080, "group": "", "kind": "Service", "weight": 1}
    ]
    assert first["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert second["filters"][0]["requestMirror"] == {
        "backendRef": {"name": "agent-staging", "port": 8080, "group": "", "kind": "Service"},
        "fraction": {"numerator": 1, "denominator": 100},
    }
    assert third["matches"] == [
        {
            "headers": [{"name": "x-coalmine-arm", "value": "canary", "type": "Exact"}],
            "path": {"type": "PathPrefix", "value": "/"},
        }
    ]
    rules_default = route()
    del rules_default["spec"]["rules"]
    assert create(routes, {**rules_default, "metadata": {"name": "b"}})["spec"]["rules"] == [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}
    ]


def test_unknown_fields_are_pruned_with_a_warning(
    kube: FakeKubeServer, routes: client.CustomObjectsApi
) -> None:
    body = route()
    body["spec"]["rules"][0]["backendRefs"][0]["canaryWeight"] = 5
    body["spec"]["mirrorPercent"] = 25
    body["metadata"]["owner"] = "coalmine"
    made = create(routes, body)
    assert "mirrorPercent" not in made["spec"] and "owner" not in made["metadata"]
    assert "canaryWeight" not in made["spec"]["rules"][0]["backendRefs"][0]
    response = kube.api_client().rest_client.pool_manager.request(
        "POST",
        f"{kube.url}/apis/{GROUP}/{VERSION}/namespaces/{NS}/{PLURAL}",
        body=json.dumps({**body, "metadata": {"name": "b"}}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {kube.token}"},
    )
    assert response.status == 201
    assert response.headers.getlist("Warning") == [
        '299 - "unknown field \\"spec.mirrorPercent\\""',
        '299 - "unknown field \\"spec.rules[0].backendRefs[0].canaryWeight\\""',
    ]
    code, status = failure(
        create, routes, {**body, "metadata": {"name": "c"}}, field_validation="Strict"
    )
    assert code == 400
    assert 'unknown field "spec.mirrorPercent"' in status["message"]


def test_generation_and_status(routes: client.CustomObjectsApi) -> None:
    body = route()
    body["status"] = {"parents": []}
    made = create(routes, body)
    assert "status" not in made and made["metadata"]["generation"] == 1

    labelled = routes.patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "agent", {"metadata": {"labels": {"release": "r1"}}}
    )
    assert labelled["metadata"]["generation"] == 1

    accepted = {
        "parents": [
            {
                "parentRef": {"name": "gateway", "namespace": "infra"},
                "controllerName": "example.com/gateway-controller",
                "conditions": [
                    {
                        "type": "Accepted",
                        "status": "True",
                        "reason": "Accepted",
                        "message": "",
                        "lastTransitionTime": "2026-12-02T16:04:21Z",
                        "observedGeneration": 1,
                    }
                ],
            }
        ]
    }
    written = routes.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        NS,
        PLURAL,
        "agent",
        {"status": accepted, "spec": {"hostnames": ["ignored.example.com"]}},
    )
    assert written["status"]["parents"][0]["parentRef"]["group"] == GROUP  # defaulted
    assert written["spec"] == made["spec"] and written["metadata"]["generation"] == 1
    assert routes.get_namespaced_custom_object_status(GROUP, VERSION, NS, PLURAL, "agent") == (
        written
    )

    current = get(routes)
    current["status"] = {"parents": []}
    current["spec"]["hostnames"] = ["b.example.com"]
    replaced = routes.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "agent", current)
    assert replaced["status"] == written["status"]
    assert replaced["metadata"]["generation"] == 2

    bad_status = {"status": {"parents": [{"parentRef": {"name": "gateway"}}]}}
    code, status = failure(
        routes.patch_namespaced_custom_object_status,
        GROUP,
        VERSION,
        NS,
        PLURAL,
        "agent",
        bad_status,
    )
    assert code == 422
    assert "status.parents[0].controllerName: Required value" in causes(status)


# -- valid routes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rule",
    [weighted(), weighted_with_mirror(), prompt_arms()],
    ids=["weighted", "weighted-with-mirror", "prompt-arms"],
)
def test_the_three_shapes_coalmine_writes_are_valid(
    routes: client.CustomObjectsApi, rule: dict[str, Any]
) -> None:
    made = create(routes, route("agent", rule))
    assert made["spec"]["rules"][0]["backendRefs"][0]["weight"] == 90


def test_rules_coalmine_does_not_own_may_sit_beside_its_own(
    routes: client.CustomObjectsApi,
) -> None:
    other = {
        "matches": [{"path": {"type": "Exact", "value": "/healthz"}}],
        "filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 301}}],
    }
    create(routes, route("agent", weighted(), other))


def test_two_request_mirrors_are_allowed_by_this_crd(routes: client.CustomObjectsApi) -> None:
    """Gateway API v1.6 lets a rule mirror to several backends: no rule forbids it."""
    rule = {**weighted(), "filters": [mirror(percent=25), mirror("agent-shadow", percent=5)]}
    create(routes, route("agent", rule))


# -- schema errors ------------------------------------------------------------------------


def first_backend(spec: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = spec["rules"][0]["backendRefs"][0]
    return found


@pytest.mark.parametrize("weight", [1000001, -1])
def test_weights_range_from_0_to_1000000(routes: client.CustomObjectsApi, weight: int) -> None:
    status = rejected(routes, broken(lambda s: first_backend(s).update(weight=weight), weighted()))
    bound = "less than or equal to 1000000" if weight > 0 else "greater than or equal to 0"
    path = "spec.rules[0].backendRefs[0].weight"
    assert causes(status) == [f"{path}: Invalid value: {weight}: {path} in body should be {bound}"]
    assert status["message"] == f'HTTPRoute.{GROUP} "agent" is invalid: {causes(status)[0]}'


def test_at_most_16_rules(routes: client.CustomObjectsApi) -> None:
    status = rejected(routes, route("agent", *[weighted()] * 17))
    assert causes(status) == ["spec.rules: Too many: 17: must have at most 16 items", CEL_SKIPPED]


def test_at_most_16_backend_refs(routes: client.CustomObjectsApi) -> None:
    many = {"backendRefs": [backend(f"agent-{i}", 1) for i in range(17)]}
    status = rejected(routes, route("agent", many))
    assert causes(status) == [
        "spec.rules[0].backendRefs: Too many: 17: must have at most 16 items",
        CEL_SKIPPED,
    ]


def test_header_modifier_names_are_unique(routes: client.CustomObjectsApi) -> None:
    twice = header_arm("canary", "candidate")
    twice["requestHeaderModifier"]["set"].append({"name": "x-coalmine-arm", "value": "stable"})
    rule = {"backendRefs": [backend("agent", 10, filters=[twice])]}
    status = rejected(routes, route("agent", rule))
    path = "spec.rules[0].backendRefs[0].filters[0].requestHeaderModifier.set[2]"
    assert causes(status) == [
        f'{path}: Duplicate value: map[string]interface {{}}{{"name":"x-coalmine-arm"}}'
    ]


def test_header_names_follow_the_rfc_7230_token_pattern(routes: client.CustomObjectsApi) -> None:
    bad = header_arm("canary", "candidate")
    bad["requestHeaderModifier"]["set"][0]["name"] = "x coalmine arm"
    status = rejected(routes, route("agent", {"filters": [bad]}))
    (cause,) = causes(status)
    path = "spec.rules[0].filters[0].requestHeaderModifier.set[0].name"
    assert cause.startswith(f'{path}: Invalid value: "x coalmine arm": {path} in body should match')


def test_filter_types_are_an_enum(routes: client.CustomObjectsApi) -> None:
    status = rejected(routes, route("agent", {"filters": [{"type": "Shadow"}]}))
    assert causes(status) == [
        'spec.rules[0].filters[0].type: Unsupported value: "Shadow": supported values: '
        '"RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", '
        '"RequestRedirect", "URLRewrite", "ExtensionRef", "CORS"',
        CEL_SKIPPED,
    ]


def test_a_backend_ref_needs_a_name_of_the_right_type(routes: client.CustomObjectsApi) -> None:
    status = rejected(routes, broken(lambda s: first_backend(s).pop("name"), weighted()))
    assert causes(status) == ["spec.rules[0].backendRefs[0].name: Required value", CEL_SKIPPED]
    status = rejected(routes, broken(lambda s: first_backend(s).update(weight="90"), weighted()))
    path = "spec.rules[0].backendRefs[0].weight"
    assert causes(status) == [
        f'{path}: Invalid value: "string": {path} in body must be of type integer: "string"',
        CEL_SKIPPED,
    ]
    status = rejected(routes, broken(lambda s: first_backend(s).update(name="a" * 254), weighted()))
    assert causes(status) == [
        "spec.rules[0].backendRefs[0].name: Too long: may not be more than 253 bytes",
        CEL_SKIPPED,
    ]


# -- CEL rules ----------------------------------------------------------------------------


def cel_cause(routes: client.CustomObjectsApi, body: dict[str, Any]) -> str:
    status = rejected(routes, body)
    (cause,) = causes(status)
    return cause


def test_mirror_percent_and_fraction_are_exclusive(routes: client.CustomObjectsApi) -> None:
    rule = {**weighted(), "filters": [mirror(percent=25, fraction={"numerator": 1})]}
    assert cel_cause(routes, route("agent", rule)) == (
        'spec.rules[0].filters[0].requestMirror: Invalid value: "object": Only one of '
        "percent or fraction may be specified in HTTPRequestMirrorFilter"
    )


def test_mirror_fraction_is_at_most_one(routes: client.CustomObjectsApi) -> None:
    rule = {**weighted(), "filters": [mirror(fraction={"numerator": 5, "denominator": 4})]}
    assert cel_cause(routes, route("agent", rule)) == (
        'spec.rules[0].filters[0].requestMirror.fraction: Invalid value: "object": '
        "numerator must be less than or equal to denominator"
    )


def test_mirror_percent_is_a_percentage(routes: client.CustomObjectsApi) -> None:
    rule = {**weighted(), "filters": [mirror(percent=101)]}
    path = "spec.rules[0].filters[0].requestMirror.percent"
    assert causes(rejected(routes, route("agent", rule))) == [
        f"{path}: Invalid value: 101: {path} in body should be less than or equal to 100"
    ]


def test_filter_type_must_match_its_config(routes: client.CustomObjectsApi) -> None:
    crossed = {"type": "RequestMirror", "requestHeaderModifier": {"set": []}}
    status = rejected(routes, route("agent", {**weighted(), "filters": [crossed]}))
    assert causes(status) == [
        'spec.rules[0].filters[0]: Invalid value: "object": filter.requestHeaderModifier '
        "must be nil if the filter.type is not RequestHeaderModifier",
        'spec.rules[0].filters[0]: Invalid value: "object": filter.requestMirror must be '
        "specified for RequestMirror filter.type",
    ]


def test_a_request_header_modifier_is_not_repeated(routes: client.CustomObjectsApi) -> None:
    arms = [header_arm("canary", "candidate"), header_arm("stable", "production")]
    rule = {"backendRefs": [backend("agent", 10, filters=arms)]}
    assert cel_cause(routes, route("agent", rule)) == (
        'spec.rules[0].backendRefs[0].filters: Invalid value: "array": '
        "RequestHeaderModifier filter cannot be repeated"
    )


@pytest.mark.parametrize(
    ("where", "rule"),
    [
        ("spec.rules[0].backendRefs[0]", {"backendRefs": [{"name": "agent-stable"}]}),
        (
            "spec.rules[0].filters[0].requestMirror.backendRef",
            {
                "filters": [
                    {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "s"}}}
                ]
            },
        ),
    ],
    ids=["backend-ref", "mirror-backend-ref"],
)
def test_a_service_reference_needs_a_port(
    routes: client.CustomObjectsApi, where: str, rule: dict[str, Any]
) -> None:
    assert cel_cause(routes, route("agent", rule)) == (
        f'{where}: Invalid value: "object": Must have port for Service reference'
    )
    other_kind = copy.deepcopy(rule)
    if "backendRefs" in other_kind:
        other_kind["backendRefs"][0].update(group="example.com", kind="Bucket")
        create(routes, route("agent", other_kind))


def test_a_redirect_does_not_go_with_backend_refs(routes: client.CustomObjectsApi) -> None:
    redirect = {"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}}
    assert cel_cause(routes, route("agent", {**weighted(), "filters": [redirect]})) == (
        'spec.rules[0]: Invalid value: "object": RequestRedirect filter must not be used '
        "together with backendRefs"
    )


def test_a_redirect_and_a_rewrite_are_exclusive(routes: client.CustomObjectsApi) -> None:
    rule = {
        "filters": [
            {"type": "URLRewrite", "urlRewrite": {"hostname": "agent.example.com"}},
            {"type": "RequestRedirect", "requestRedirect": {"scheme": "https"}},
        ]
    }
    assert cel_cause(routes, route("agent", rule)) == (
        'spec.rules[0].filters: Invalid value: "array": May specify either '
        "httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite, but not both"
    )


def test_a_prefix_rewrite_needs_exactly_one_prefix_match(routes: client.CustomObjectsApi) -> None:
    rewrite = {
        "type": "URLRewrite",
        "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}},
    }
    rule = {**weighted(), "filters": [rewrite]}
    rule["matches"] = [{"path": {"type": "Exact", "value": "/v1"}}]
    assert cel_cause(routes, route("agent", rule)) == (
        'spec.rules[0]: Invalid value: "object": When using URLRewrite filter with '
        "path.replacePrefixMatch, exactly one PathPrefix match must be specified"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("api", "value must be an absolute path and start with '/' when type one of "),
        ("/a//b", "must not contain '//' when type one of "),
        ("/a/../b", "must not contain '/../' when type one of "),
        ("/a%2fb", "must not contain '%2f' when type one of "),
        ("/a#b", "must not contain '#' when type one of "),
        ("/a/.", "must not end with '/.' when type one of "),
    ],
)
def test_path_match_values(routes: client.CustomObjectsApi, value: str, message: str) -> None:
    rule = {**weighted(), "matches": [{"path": {"type": "PathPrefix", "value": value}}]}
    found = causes(rejected(routes, route("agent", rule)))
    # '#' also breaks the rule on valid characters
    assert found[0] == (
        f'spec.rules[0].matches[0].path: Invalid value: "object": {message}'
        "['Exact', 'PathPrefix']"
    )


def test_path_match_characters(routes: client.CustomObjectsApi) -> None:
    rule = {**weighted(), "matches": [{"path": {"type": "Exact", "value": "/a b"}}]}
    assert cel_cause(routes, route("agent", rule)).startswith(
        'spec.rules[0].matches[0].path: Invalid value: "object": must only contain valid '
        "characters (matching ^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|[%][0-9a-fA-F]{2})+$)"
    )
    fine = {**weighted(), "matches": [{"path": {"type": "Exact", "value": "/a%20b~c"}}]}
    create(routes, route("agent", fine))


def test_backend_timeout_is_within_the_request_timeout(routes: client.CustomObjectsApi) -> None:
    rule = {**weighted(), "timeouts": {"request": "10s", "backendRequest": "1m"}}
    assert cel_cause(routes, route("agent", rule)) == (
        'spec.rules[0].timeouts: Invalid value: "object": backendRequest timeout cannot be '
        "longer than request timeout"
    )
    rule["timeouts"] = {"request": "1m", "backendRequest": "59s500ms"}
    create(routes, route("agent", rule))


def test_parent_refs_to_one_gateway_need_distinct_section_names(
    routes: client.CustomObjectsApi,
) -> None:
    body = route()
    body["spec"]["parentRefs"] = [{"name": "gateway"}, {"name": "gateway", "sectionName": "http"}]
    assert cel_cause(routes, body) == (
        'spec.parentRefs: Invalid value: "array": sectionName must be specified when '
        "parentRefs includes 2 or more references to the same parent"
    )
    body["spec"]["parentRefs"] = [
        {"name": "gateway", "namespace": "infra", "sectionName": "http"},
        {"name": "gateway", "namespace": "infra", "sectionName": "http"},
    ]
    assert cel_cause(routes, body) == (
        'spec.parentRefs: Invalid value: "array": sectionName must be unique when '
        "parentRefs includes 2 or more references to the same parent"
    )
    body["spec"]["parentRefs"][1]["sectionName"] = "https"
    create(routes, body)


def test_at_most_128_matches_in_all(routes: client.CustomObjectsApi) -> None:
    many = {"matches": [{"path": {"type": "PathPrefix", "value": f"/{i}"}} for i in range(64)]}
    assert cel_cause(routes, route("agent", many, many, {"matches": many["matches"][:1]})) == (
        'spec.rules: Invalid value: "array": While 16 rules and 64 matches per rule are '
        "allowed, the total number of matches across all rules in a route must be less than 128"
    )


def test_cors_wildcards_stand_alone(routes: client.CustomObjectsApi) -> None:
    cors = {"type": "CORS", "cors": {"allowOrigins": ["*", "https://shop.example.com"]}}
    assert cel_cause(routes, route("agent", {**weighted(), "filters": [cors]})) == (
        'spec.rules[0].filters[0].cors.allowOrigins: Invalid value: "array": '
        "AllowOrigins cannot contain '*' alongside other origins"
    )


# -- writes other than create -------------------------------------------------------------


def test_updates_and_patches_are_validated_too(routes: client.CustomObjectsApi) -> None:
    create(routes, route("agent", weighted_with_mirror()))
    current = get(routes)
    current["spec"]["rules"][0]["filters"][0]["requestMirror"]["fraction"] = {"numerator": 1}
    code, status = failure(
        routes.replace_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, "agent", current
    )
    assert code == 422 and "Only one of percent or fraction" in status["message"]

    path = "/spec/rules/0/backendRefs/0/weight"
    code, status = failure(
        routes.patch_namespaced_custom_object,
        GROUP,
        VERSION,
        NS,
        PLURAL,
        "agent",
        [{"op": "replace", "path": path, "value": 2000000}],
        _content_type=JSON_PATCH,
    )
    assert code == 422
    assert causes(status) == [
        "spec.rules[0].backendRefs[0].weight: Invalid value: 2000000: "
        "spec.rules[0].backendRefs[0].weight in body should be less than or equal to 1000000"
    ]
    filters = {"spec": {"rules": [{**weighted(), "filters": [{"type": "RequestMirror"}]}]}}
    code, status = failure(
        routes.patch_namespaced_custom_object, GROUP, VERSION, NS, PLURAL, "agent", filters
    )
    assert code == 422
    assert get(routes)["metadata"]["generation"] == 1
