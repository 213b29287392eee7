"""The fake Kubernetes API server, driven by the official ``kubernetes`` client over
loopback HTTP: CRUD of ConfigMaps, Leases and Events, resource versions and optimistic
concurrency, validation, selectors, paging, watches and their 410, auth, faults.

A few requests the client cannot make (malformed JSON, a value of the wrong type) go out
raw through the client's own connection pool.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from tests.fakes.kube_api import FakeKubeServer

NS = "team-a"


# -- helpers ------------------------------------------------------------------------------


def failure(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """The status code and parsed Status body of a call that must fail."""
    with pytest.raises(ApiException) as caught:
        call(*args, **kwargs)
    body: dict[str, Any] = json.loads(caught.value.body)
    assert body["kind"] == "Status" and body["apiVersion"] == "v1"
    assert body["status"] == "Failure" and body["code"] == caught.value.status
    assert caught.value.headers["Content-Type"] == "application/json"
    return int(caught.value.status), body


def raw(
    api: client.ApiClient, method: str, path: str, body: bytes, content_type: str
) -> tuple[int, Any]:
    """A request with a body the client would never serialise, through its pool."""
    response = api.rest_client.pool_manager.request(
        method,
        api.configuration.host + path,
        body=body,
        headers={
            "Content-Type": content_type,
            "Authorization": api.configuration.get_api_key_with_prefix("authorization"),
        },
    )
    return response.status, json.loads(response.data)


def config_map(name: str, data: dict[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, **meta}, "data": data or {}}


def lease(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"holderIdentity": "pod-a", **spec}}


def core_event(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": NS},
        "reason": "Started",
        "message": "started",
        "type": "Normal",
        "count": 1,
        "firstTimestamp": "2026-12-02T16:04:21Z",
        "lastTimestamp": "2026-12-02T16:04:21Z",
        "source": {"component": "kubelet"},
        **fields,
    }


def version(obj: Any) -> int:
    return int(obj.metadata.resource_version)


def collect(call: Callable[..., Any], count: int, **kwargs: Any) -> list[tuple[str, str, int]]:
    """The first ``count`` watch events (type, name, version), or fewer after 5 s."""
    stream = watch.Watch()
    seen: list[tuple[str, str, int]] = []
    for event in stream.stream(call, NS, timeout_seconds=5, **kwargs):
        seen.append((event["type"], event["object"].metadata.name, version(event["object"])))
        if len(seen) == count:
            stream.stop()
    return seen


# -- round trips --------------------------------------------------------------------------


def test_a_config_map_goes_through_create_get_list_replace_patch_and_delete(
    core: client.CoreV1Api,
) -> None:
    created = core.create_namespaced_config_map(NS, config_map("app", {"mode": "a"}))
    assert created.metadata.namespace == NS and created.metadata.uid
    assert created.metadata.creation_timestamp.tzinfo is not None
    assert created.metadata.generation is None
    assert core.read_namespaced_config_map("app", NS).data == {"mode": "a"}
    listed = core.list_namespaced_config_map(NS)
    assert [item.metadata.name for item in listed.items] == ["app"]
    assert listed.kind == "ConfigMapList" and int(listed.metadata.resource_version) >= 1

    created.data = {"mode": "b"}
    replaced = core.replace_namespaced_config_map("app", NS, created)
    assert replaced.data == {"mode": "b"} and replaced.metadata.uid == created.metadata.uid

    strategic = core.patch_namespaced_config_map("app", NS, {"data": {"extra": "1"}})
    assert strategic.data == {"mode": "b", "extra": "1"}
    merged = core.patch_namespaced_config_map(
        "app", NS, {"data": {"extra": None}}, _content_type="application/merge-patch+json"
    )
    assert merged.data == {"mode": "b"}
    patched = core.patch_namespaced_config_map(
        "app", NS, [{"op": "replace", "path": "/data/mode", "value": "c"}]
    )
    assert patched.data == {"mode": "c"}

    status = core.delete_namespaced_config_map("app", NS)  # the client gives it as a dict
    assert status["status"] == "Success" and status["details"]["kind"] == "configmaps"
    assert status["details"]["uid"] == created.metadata.uid
    code, body = failure(core.read_namespaced_config_map, "app", NS)
    assert code == 404 and body["message"] == 'configmaps "app" not found'
    assert body["reason"] == "NotFound" and body["details"] == {"name": "app", "kind": "configmaps"}


def test_a_lease_goes_through_create_get_replace_patch_and_delete(
    leases: client.CoordinationV1Api,
) -> None:
    created = leases.create_namespaced_lease(
        NS, lease("leader", leaseDurationSeconds=15, renewTime="2026-12-02T16:04:21.123456Z")
    )
    assert created.spec.renew_time == datetime(2026, 12, 2, 16, 4, 21, 123456, tzinfo=UTC)
    got = leases.read_namespaced_lease("leader", NS)
    got.spec.holder_identity, got.spec.lease_transitions = "pod-b", 1
    replaced = leases.replace_namespaced_lease("leader", NS, got)
    assert replaced.spec.holder_identity == "pod-b" and version(replaced) > version(created)
    patched = leases.patch_namespaced_lease("leader", NS, {"spec": {"leaseTransitions": 2}})
    assert patched.spec.lease_transitions == 2 and patched.spec.lease_duration_seconds == 15
    listed = leases.list_namespaced_lease(NS)
    assert listed.kind == "LeaseList" and len(listed.items) == 1
    status = leases.delete_namespaced_lease("leader", NS)
    assert status["details"]["group"] == "coordination.k8s.io"
    assert status["details"]["kind"] == "leases"
    code, body = failure(leases.read_namespaced_lease, "leader", NS)
    assert code == 404 and body["message"] == 'leases.coordination.k8s.io "leader" not found'


def test_a_core_event_goes_through_create_get_list_patch_and_delete(
    core: client.CoreV1Api,
) -> None:
    created = core.create_namespaced_event(NS, core_event("web-1.a"))
    assert created.involved_object.name == "web-1" and created.event_time is None
    assert created.reporting_component == "" and created.count == 1
    core.create_namespaced_event(
        NS, core_event("web-2.a", involvedObject={"kind": "Pod", "name": "web-2", "namespace": NS})
    )
    chosen = core.list_namespaced_event(NS, field_selector="involvedObject.name=web-1")
    assert [e.metadata.name for e in chosen.items] == ["web-1.a"]
    patched = core.patch_namespaced_event(
        "web-1.a", NS, {"count": 2, "lastTimestamp": "2026-12-02T16:05:00Z"}
    )
    assert patched.count == 2 and patched.last_timestamp.minute == 5
    assert core.read_namespaced_event("web-1.a", NS).count == 2
    core.delete_namespaced_event("web-1.a", NS)
    assert [e.metadata.name for e in core.list_namespaced_event(NS).items] == ["web-2.a"]


def test_events_v1_is_a_second_view_of_the_core_events(
    core: client.CoreV1Api, events_v1: client.EventsV1Api
) -> None:
    created = events_v1.create_namespaced_event(
        NS,
        {
            "metadata": {"name": "rollout.1"},
            "eventTime": "2026-12-02T16:04:21.000001Z",
            "reportingController": "coalmine.dev/controller",
            "reportingInstance": "pod-a",
            "action": "Promote",
            "reason": "Promoted",
            "regarding": {"kind": "Deployment", "name": "web", "namespace": NS},
            "note": "canary promoted",
            "type": "Normal",
        },
    )
    assert created.note == "canary promoted" and created.regarding.name == "web"
    seen = core.read_namespaced_event("rollout.1", NS)
    assert seen.message == "canary promoted" and seen.involved_object.kind == "Deployment"
    assert seen.reporting_component == "coalmine.dev/controller"
    assert seen.metadata.resource_version == created.metadata.resource_version


# -- resource versions and concurrency ----------------------------------------------------


def test_the_resource_version_rises_on_every_write_of_every_resource(
    core: client.CoreV1Api, leases: client.CoordinationV1Api
) -> None:
    versions = [
        version(core.create_namespaced_config_map(NS, config_map("a"))),
        version(leases.create_namespaced_lease(NS, lease("l"))),
        version(core.replace_namespaced_config_map("a", NS, config_map("a", {"k": "v"}))),
        version(core.patch_namespaced_config_map("a", NS, {"data": {"k": "w"}})),
        version(core.create_namespaced_event(NS, core_event("e"))),
    ]
    before_delete = int(core.list_namespaced_config_map(NS).metadata.resource_version)
    core.delete_namespaced_config_map("a", NS)
    after_delete = int(core.list_namespaced_config_map(NS).metadata.resource_version)
    assert versions == sorted(set(versions)) and versions[0] >= 1
    assert before_delete == versions[-1] and after_delete == before_delete + 1


def test_an_update_that_changes_nothing_keeps_the_resource_version(
    core: client.CoreV1Api,
) -> None:
    created = core.create_namespaced_config_map(NS, config_map("a", {"k": "v"}))
    again = core.replace_namespaced_config_map("a", NS, config_map("a", {"k": "v"}))
    patched = core.patch_namespaced_config_map("a", NS, {"data": {"k": "v"}})
    assert version(again) == version(patched) == version(created)


def test_a_replace_with_a_stale_resource_version_is_a_conflict(core: client.CoreV1Api) -> None:
    first = core.create_namespaced_config_map(NS, config_map("app", {"v": "1"}))
    core.patch_namespaced_config_map("app", NS, {"data": {"v": "2"}})
    first.data = {"v": "3"}
    code, body = failure(core.replace_namespaced_config_map, "app", NS, first)
    assert code == 409 and body["reason"] == "Conflict"
    assert body["message"] == (
        'Operation cannot be fulfilled on configmaps "app": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    assert core.read_namespaced_config_map("app", NS).data == {"v": "2"}


def test_a_replace_without_a_resource_version_is_unconditional_for_config_maps_only(
    core: client.CoreV1Api, leases: client.CoordinationV1Api
) -> None:
    core.create_namespaced_config_map(NS, config_map("app", {"v": "1"}))
    assert core.replace_namespaced_config_map("app", NS, config_map("app", {"v": "2"})).data == {
        "v": "2"
    }
    leases.create_namespaced_lease(NS, lease("leader"))
    code, body = failure(leases.replace_namespaced_lease, "leader", NS, lease("leader"))
    assert code == 422 and body["message"] == (
        'leases.coordination.k8s.io "leader" is invalid: metadata.resourceVersion: '
        "Invalid value: 0x0: must be specified for an update"
    )


def test_a_patch_carrying_a_stale_resource_version_is_a_conflict(
    core: client.CoreV1Api,
) -> None:
    created = core.create_namespaced_config_map(NS, config_map("app"))
    core.patch_namespaced_config_map("app", NS, {"data": {"a": "1"}})
    stale = {"metadata": {"resourceVersion": created.metadata.resource_version}, "data": {}}
    code, body = failure(core.patch_namespaced_config_map, "app", NS, stale)
    assert code == 409 and body["reason"] == "Conflict"


def test_of_concurrent_writers_at_one_resource_version_exactly_one_wins(
    kube: FakeKubeServer,
) -> None:
    writers = [client.CoreV1Api(kube.api_client()) for _ in range(8)]
    base = writers[0].create_namespaced_config_map(NS, config_map("race"))
    barrier = threading.Barrier(len(writers))
    outcomes: list[int] = []

    def write(index: int, core: client.CoreV1Api) -> None:
        body = config_map(
            "race", {"writer": str(index)}, resourceVersion=base.metadata.resource_version
        )
        barrier.wait()
        try:
            core.replace_namespaced_config_map("race", NS, body)
            outcomes.append(200)
        except ApiException as error:
            outcomes.append(error.status)

    threads = [threading.Thread(target=write, args=item) for item in enumerate(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [200] + [409] * 7
    final = writers[0].read_namespaced_config_map("race", NS)
    assert version(final) == version(base) + 1
    for core in writers:
        core.api_client.close()


# -- create, get and delete errors --------------------------------------------------------


def test_creating_a_name_twice_is_already_exists(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map(NS, config_map("app"))
    code, body = failure(core.create_namespaced_config_map, NS, config_map("app"))
    assert code == 409 and body["reason"] == "AlreadyExists"
    assert body["message"] == 'configmaps "app" already exists'


def test_a_generated_name_and_a_resource_version_set_on_create(core: client.CoreV1Api) -> None:
    made = core.create_namespaced_config_map(NS, {"metadata": {"generateName": "job-"}})
    assert made.metadata.name.startswith("job-") and len(made.metadata.name) == 9
    body = config_map("pinned", resourceVersion="7")
    code, status = failure(core.create_namespaced_config_map, NS, body)
    assert code == 500
    assert status["message"] == "resourceVersion should not be set on objects to be created"


def test_a_dry_run_create_validates_and_stores_nothing(core: client.CoreV1Api) -> None:
    shown = core.create_namespaced_config_map(NS, config_map("app"), dry_run="All")
    assert shown.metadata.uid and shown.metadata.resource_version is None
    assert failure(core.read_namespaced_config_map, "app", NS)[0] == 404


def test_a_delete_with_stale_preconditions_is_a_conflict(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_config_map(NS, config_map("app"))
    core.patch_namespaced_config_map("app", NS, {"data": {"a": "1"}})
    stale = client.V1DeleteOptions(
        preconditions=client.V1Preconditions(resource_version=created.metadata.resource_version)
    )
    code, body = failure(core.delete_namespaced_config_map, "app", NS, body=stale)
    assert code == 409 and body["reason"] == "Conflict"
    assert body["message"].startswith(
        'Operation cannot be fulfilled on ConfigMap "app": the ResourceVersion in the '
        f"precondition ({created.metadata.resource_version}) does not match"
    )
    other_uid = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="not-it"))
    assert failure(core.delete_namespaced_config_map, "app", NS, body=other_uid)[0] == 409
    current = core.read_namespaced_config_map("app", NS)
    matching = client.V1DeleteOptions(
        preconditions=client.V1Preconditions(
            resource_version=current.metadata.resource_version, uid=current.metadata.uid
        )
    )
    assert core.delete_namespaced_config_map("app", NS, body=matching)["status"] == "Success"


def test_deleting_an_object_with_finalizers_only_marks_it(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map(NS, config_map("held", finalizers=["example.com/hold"]))
    marked = core.delete_namespaced_config_map("held", NS)
    assert marked["kind"] == "ConfigMap" and marked["metadata"]["deletionTimestamp"]
    pending = core.read_namespaced_config_map("held", NS)
    assert pending.metadata.deletion_timestamp is not None
    core.patch_namespaced_config_map(
        "held", NS, {"metadata": {"finalizers": None}}, _content_type="application/merge-patch+json"
    )
    assert failure(core.read_namespaced_config_map, "held", NS)[0] == 404


def test_a_missing_object_is_not_found_for_every_verb(
    core: client.CoreV1Api, leases: client.CoordinationV1Api
) -> None:
    for call, args in (
        (core.read_namespaced_config_map, ("nope", NS)),
        (core.replace_namespaced_config_map, ("nope", NS, config_map("nope"))),
        (core.patch_namespaced_config_map, ("nope", NS, {"data": {}})),
        (core.delete_namespaced_config_map, ("nope", NS)),
        (leases.patch_namespaced_lease, ("nope", NS, {"spec": {}})),
    ):
        code, body = failure(call, *args)
        assert code == 404 and body["details"]["name"] == "nope"


def test_each_patch_type_and_how_each_fails(api: client.ApiClient, core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map(NS, config_map("app", {"a": "1"}, finalizers=["x.io/a"]))
    tested = [
        {"op": "test", "path": "/data/a", "value": "1"},
        {"op": "add", "path": "/data/b", "value": "2"},
    ]
    assert core.patch_namespaced_config_map("app", NS, tested).data == {"a": "1", "b": "2"}
    code, body = failure(
        core.patch_namespaced_config_map,
        "app",
        NS,
        [{"op": "test", "path": "/data/a", "value": "wrong"}],
    )
    assert code == 422 and body["reason"] == "Invalid"
    missing = [{"op": "remove", "path": "/data/nothing"}]
    assert failure(core.patch_namespaced_config_map, "app", NS, missing)[0] == 422
    # finalizers carry a merge strategy: a strategic patch adds, a merge patch replaces
    added = core.patch_namespaced_config_map("app", NS, {"metadata": {"finalizers": ["x.io/b"]}})
    assert added.metadata.finalizers == ["x.io/a", "x.io/b"]
    replaced = core.patch_namespaced_config_map(
        "app",
        NS,
        {"metadata": {"finalizers": ["x.io/c"]}},
        _content_type="application/merge-patch+json",
    )
    assert replaced.metadata.finalizers == ["x.io/c"]
    path = f"/api/v1/namespaces/{NS}/configmaps/app"
    code, body = raw(api, "PATCH", path, b'{"data": {}}', "text/plain")
    assert code == 415 and body["reason"] == "UnsupportedMediaType"
    renamed = {"metadata": {"name": "other"}}
    assert failure(core.patch_namespaced_config_map, "app", NS, renamed)[0] == 400
    # the server answers with the list deleted; the client would read it as a V1Status
    deleted = core.delete_collection_namespaced_config_map(
        NS, field_selector="metadata.name=app", _preload_content=False
    )
    listed = json.loads(deleted.data)
    assert listed["kind"] == "ConfigMapList"
    assert [item["metadata"]["name"] for item in listed["items"]] == ["app"]
    [held] = core.list_namespaced_config_map(NS).items  # its finalizer holds it
    assert held.metadata.deletion_timestamp is not None


# -- validation ---------------------------------------------------------------------------


def test_an_invalid_name_is_rejected_with_the_servers_message(core: client.CoreV1Api) -> None:
    code, body = failure(core.create_namespaced_config_map, NS, config_map("Bad_Name"))
    assert code == 422 and body["reason"] == "Invalid"
    assert body["message"].startswith(
        'ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase '
        "RFC 1123 subdomain must consist of lower case alphanumeric characters"
    )
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    assert failure(core.create_namespaced_config_map, NS, config_map("a" * 254))[0] == 422
    code, body = failure(core.create_namespaced_config_map, NS, {"metadata": {}})
    assert body["message"] == (
        'ConfigMap "" is invalid: metadata.name: Required value: name or generateName is required'
    )


def test_config_map_contents_are_validated(core: client.CoreV1Api) -> None:
    big = config_map("big", {"a": "x" * (1024 * 1024), "b": "y"})
    code, body = failure(core.create_namespaced_config_map, NS, big)
    assert code == 422
    assert (
        body["message"]
        == 'ConfigMap "big" is invalid: []: Too long: must have at most 1048576 bytes'
    )
    exact = config_map("exact", {"a": "x" * (1024 * 1024)})
    assert core.create_namespaced_config_map(NS, exact).metadata.name == "exact"
    code, body = failure(core.create_namespaced_config_map, NS, config_map("k", {"a b": "1"}))
    assert code == 422 and body["details"]["causes"][0]["field"] == "data[a b]"
    both = {**config_map("dup", {"k": "1"}), "binaryData": {"k": "MQ=="}}
    assert failure(core.create_namespaced_config_map, NS, both)[0] == 422


def test_an_immutable_config_map_refuses_new_data(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map(NS, {**config_map("frozen", {"a": "1"}), "immutable": True})
    code, body = failure(core.patch_namespaced_config_map, "frozen", NS, {"data": {"a": "2"}})
    assert code == 422
    assert "data: Forbidden: field is immutable when `immutable` is set" in body["message"]
    labelled = core.patch_namespaced_config_map(
        "frozen", NS, {"metadata": {"labels": {"tier": "web"}}}
    )
    assert labelled.metadata.labels == {"tier": "web"} and labelled.data == {"a": "1"}


def test_values_of_the_wrong_type_and_malformed_json_are_bad_requests(
    api: client.ApiClient, core: client.CoreV1Api
) -> None:
    path = f"/api/v1/namespaces/{NS}/configmaps"
    wrong = json.dumps(config_map("n", {"a": 1})).encode()  # type: ignore[dict-item]
    code, body = raw(api, "POST", path, wrong, "application/json")
    assert code == 400 and body["reason"] == "BadRequest"
    assert "cannot unmarshal number into Go struct field ConfigMap.data" in body["message"]
    binary = json.dumps({**config_map("b"), "binaryData": {"k": "not base64!"}}).encode()
    assert raw(api, "POST", path, binary, "application/json")[0] == 400
    code, body = raw(api, "POST", path, b'{"metadata": {"name": ', "application/json")
    assert code == 400 and body["kind"] == "Status" and "json parse error" in body["message"]
    core.create_namespaced_config_map(NS, config_map("there"))
    for method, content_type in (
        ("PUT", "application/json"),
        ("PATCH", "application/merge-patch+json"),
        ("PATCH", "application/json-patch+json"),
        ("DELETE", "application/json"),
    ):
        code, body = raw(api, method, f"{path}/there", b"{nope", content_type)
        assert (code, body["code"]) == (400, 400), method
    strict = json.dumps({**config_map("s"), "bogus": 1}).encode()
    code, body = raw(api, "POST", path + "?fieldValidation=Strict", strict, "application/json")
    assert code == 400 and body["message"] == 'strict decoding error: unknown field "bogus"'


def test_the_body_must_match_the_url(core: client.CoreV1Api) -> None:
    elsewhere = config_map("app", namespace="other")
    code, body = failure(core.create_namespaced_config_map, NS, elsewhere)
    assert code == 400 and body["message"] == (
        "the namespace of the provided object does not match the namespace sent on the request"
    )
    secret = {**config_map("app"), "kind": "Secret", "apiVersion": "v1"}
    assert failure(core.create_namespaced_config_map, NS, secret)[0] == 400
    lease_version = {**config_map("app"), "apiVersion": "coordination.k8s.io/v1"}
    assert failure(core.create_namespaced_config_map, NS, lease_version)[0] == 400
    core.create_namespaced_config_map(NS, config_map("app"))
    code, body = failure(core.replace_namespaced_config_map, "app", NS, config_map("other"))
    assert code == 400 and body["message"] == (
        "the name of the object (other) does not match the name on the URL (app)"
    )


def test_lease_fields_and_micro_times_are_checked_as_the_server_parses_them(
    leases: client.CoordinationV1Api,
) -> None:
    code, body = failure(leases.create_namespaced_lease, NS, lease("l", leaseDurationSeconds=0))
    assert code == 422 and body["message"] == (
        'Lease.coordination.k8s.io "l" is invalid: spec.leaseDurationSeconds: Invalid value: 0: '
        "must be greater than 0"
    )
    exact = datetime(2026, 12, 2, 16, 4, 21, 500, tzinfo=UTC)
    made = leases.create_namespaced_lease(
        NS,
        client.V1Lease(
            metadata=client.V1ObjectMeta(name="l"), spec=client.V1LeaseSpec(renew_time=exact)
        ),
    )
    assert made.spec.renew_time == exact
    # A whole-second datetime goes out as "...:21+00:00", which the MicroTime layout refuses.
    whole = client.V1Lease(
        metadata=client.V1ObjectMeta(name="w"),
        spec=client.V1LeaseSpec(renew_time=datetime(2026, 12, 2, 16, 4, 21, tzinfo=UTC)),
    )
    code, body = failure(leases.create_namespaced_lease, NS, whole)
    assert code == 400 and body["message"].endswith('cannot parse "+00:00" as ".000000"')


def test_event_rules_depend_on_the_api_version(
    core: client.CoreV1Api, events_v1: client.EventsV1Api
) -> None:
    assert core.create_namespaced_event(NS, core_event("odd", type="Bogus")).type == "Bogus"
    stray = core_event("stray", involvedObject={"kind": "Pod", "name": "p"})
    code, body = failure(core.create_namespaced_event, NS, stray)
    assert code == 422 and "involvedObject.namespace" in body["message"]
    strict = {
        "metadata": {"name": "bogus"},
        "eventTime": "2026-12-02T16:04:21.000001Z",
        "reportingController": "coalmine.dev/controller",
        "reportingInstance": "pod-a",
        "action": "Check",
        "reason": "Checked",
        "regarding": {"kind": "Pod", "name": "p", "namespace": NS},
        "type": "Bogus",
    }
    code, body = failure(events_v1.create_namespaced_event, NS, strict)
    assert code == 422
    assert 'type: Invalid value: "": has invalid value: Bogus' in body["message"]


# -- selectors and paging -----------------------------------------------------------------


def test_label_selectors_of_every_kind(core: client.CoreV1Api) -> None:
    for name, labels in (
        ("web-prod", {"app": "web", "env": "prod"}),
        ("web-dev", {"app": "web", "env": "dev"}),
        ("db", {"app": "db"}),
        ("bare", {}),
    ):
        core.create_namespaced_config_map(NS, config_map(name, labels=labels))

    def names(selector: str) -> list[str]:
        listed = core.list_namespaced_config_map(NS, label_selector=selector)
        return sorted(item.metadata.name for item in listed.items)

    assert names("app=web") == names("app==web") == ["web-dev", "web-prod"]
    assert names("env!=prod") == ["bare", "db", "web-dev"]
    assert names("env in (prod, dev)") == ["web-dev", "web-prod"]
    assert names("app notin (web)") == ["bare", "db"]
    assert names("env") == ["web-dev", "web-prod"]
    assert names("!env") == ["bare", "db"]
    assert names("app=web,env=dev") == ["web-dev"]
    code, body = failure(core.list_namespaced_config_map, NS, label_selector="app in (a")
    assert code == 400 and body["reason"] == "BadRequest"


def test_field_selectors_and_a_cluster_wide_list(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map(NS, config_map("a"))
    core.create_namespaced_config_map(NS, config_map("b"))
    core.create_namespaced_config_map("team-b", config_map("a"))
    picked = core.list_namespaced_config_map(NS, field_selector="metadata.name=a")
    assert [item.metadata.name for item in picked.items] == ["a"]
    others = core.list_namespaced_config_map(NS, field_selector="metadata.name!=a")
    assert [item.metadata.name for item in others.items] == ["b"]
    in_b = core.list_config_map_for_all_namespaces(field_selector="metadata.namespace=team-b")
    assert [(i.metadata.namespace, i.metadata.name) for i in in_b.items] == [("team-b", "a")]
    everywhere = core.list_config_map_for_all_namespaces(field_selector="metadata.name=a")
    assert [(i.metadata.namespace, i.metadata.name) for i in everywhere.items] == [
        (NS, "a"),
        ("team-b", "a"),
    ]
    code, body = failure(core.list_namespaced_config_map, NS, field_selector="data.x=1")
    assert code == 400 and body["message"] == "field label not supported: data.x"


def test_pages_of_a_list_show_one_snapshot(core: client.CoreV1Api) -> None:
    for index in range(5):
        core.create_namespaced_config_map(NS, config_map(f"cm-{index}"))
    first = core.list_namespaced_config_map(NS, limit=2)
    assert [i.metadata.name for i in first.items] == ["cm-0", "cm-1"]
    assert first.metadata.remaining_item_count == 3 and first.metadata._continue
    core.create_namespaced_config_map(NS, config_map("cm-2a"))
    core.delete_namespaced_config_map("cm-3", NS)
    rest = core.list_namespaced_config_map(NS, limit=10, _continue=first.metadata._continue)
    assert [i.metadata.name for i in rest.items] == ["cm-2", "cm-3", "cm-4"]
    assert rest.metadata.resource_version == first.metadata.resource_version
    assert not rest.metadata._continue


def test_an_exact_list_shows_an_earlier_state_and_expires_with_the_history(
    make_kube: Callable[..., FakeKubeServer],
) -> None:
    kube = make_kube(history_limit=3)
    core = client.CoreV1Api(kube.api_client())
    early = core.create_namespaced_config_map(NS, config_map("a", {"v": "1"}))
    core.patch_namespaced_config_map("a", NS, {"data": {"v": "2"}})
    then = core.list_namespaced_config_map(
        NS, resource_version=early.metadata.resource_version, resource_version_match="Exact"
    )
    assert then.items[0].data == {"v": "1"}
    core.create_namespaced_config_map(NS, config_map("b"))
    first = core.list_namespaced_config_map(NS, limit=1)
    for index in range(4):
        core.create_namespaced_config_map(NS, config_map(f"later-{index}"))
    code, body = failure(core.list_namespaced_config_map, NS, _continue=first.metadata._continue)
    assert code == 410 and body["reason"] == "Expired" and body["metadata"]["continue"]
    code, _ = failure(
        core.list_namespaced_config_map,
        NS,
        resource_version=early.metadata.resource_version,
        resource_version_match="Exact",
    )
    assert code == 410
    core.api_client.close()


# -- watch --------------------------------------------------------------------------------


def test_a_watch_from_a_version_sees_every_change_in_order(core: client.CoreV1Api) -> None:
    start = core.create_namespaced_config_map(NS, config_map("before"))
    added = core.create_namespaced_config_map(NS, config_map("app"))
    modified = core.patch_namespaced_config_map("app", NS, {"data": {"a": "1"}})
    core.delete_namespaced_config_map("app", NS)
    seen = collect(
        core.list_namespaced_config_map, 3, resource_version=start.metadata.resource_version
    )
    assert [(kind, name) for kind, name, _ in seen] == [
        ("ADDED", "app"),
        ("MODIFIED", "app"),
        ("DELETED", "app"),
    ]
    assert [v for _, _, v in seen][:2] == [version(added), version(modified)]
    assert seen[2][2] == version(modified) + 1


def test_a_watch_without_a_version_starts_with_the_current_objects(
    core: client.CoreV1Api,
) -> None:
    core.create_namespaced_config_map(NS, config_map("a"))
    core.create_namespaced_config_map(NS, config_map("b"))
    assert [(k, n) for k, n, _ in collect(core.list_namespaced_config_map, 2)] == [
        ("ADDED", "a"),
        ("ADDED", "b"),
    ]


def test_a_watch_with_a_selector_sees_objects_enter_and_leave_it(
    core: client.CoreV1Api,
) -> None:
    start = core.create_namespaced_config_map(NS, config_map("other"))
    core.create_namespaced_config_map(NS, config_map("app", labels={"app": "web"}))
    core.patch_namespaced_config_map("other", NS, {"data": {"x": "1"}})
    core.patch_namespaced_config_map("app", NS, {"metadata": {"labels": {"app": "db"}}})
    core.patch_namespaced_config_map("app", NS, {"metadata": {"labels": {"app": "web"}}})
    seen = collect(
        core.list_namespaced_config_map,
        3,
        resource_version=start.metadata.resource_version,
        label_selector="app=web",
    )
    assert [(k, n) for k, n, _ in seen] == [("ADDED", "app"), ("DELETED", "app"), ("ADDED", "app")]


def test_a_watch_from_a_version_out_of_history_gets_410(
    make_kube: Callable[..., FakeKubeServer],
) -> None:
    kube = make_kube(history_limit=2)
    api = kube.api_client()
    core = client.CoreV1Api(api)
    first = core.create_namespaced_config_map(NS, config_map("a"))
    for value in "123":
        core.patch_namespaced_config_map("a", NS, {"data": {"v": value}})
    with pytest.raises(ApiException) as caught:
        collect(
            core.list_namespaced_config_map, 1, resource_version=first.metadata.resource_version
        )
    assert caught.value.status == 410
    assert caught.value.reason == f"Expired: too old resource version: {version(first)} (2)"
    response = core.list_namespaced_config_map(
        NS, watch=True, resource_version="1", _preload_content=False
    )
    assert response.status == 200
    event = json.loads(response.data.decode().splitlines()[0])
    assert event["type"] == "ERROR" and event["object"]["code"] == 410
    assert event["object"]["reason"] == "Expired"
    api.close()


def test_a_watch_on_leases_and_an_unavailable_server_drops_it(
    kube: FakeKubeServer, leases: client.CoordinationV1Api
) -> None:
    leases.create_namespaced_lease(NS, lease("leader"))
    response = leases.list_namespaced_lease(NS, watch=True, _preload_content=False)
    first = json.loads(response.readline())
    assert first["type"] == "ADDED" and first["object"]["kind"] == "Lease"
    kube.set_unavailable(True)
    assert response.read() == b""  # the server ended the stream
    response.release_conn()
    assert failure(leases.read_namespaced_lease, "leader", NS)[0] == 503
    kube.set_unavailable(False)
    assert leases.read_namespaced_lease("leader", NS).spec.holder_identity == "pod-a"


# -- auth, discovery, faults, hooks -------------------------------------------------------


def test_a_missing_or_wrong_token_is_unauthorized(kube: FakeKubeServer) -> None:
    for api in (kube.api_client(token="wrong"), kube.api_client(anonymous=True)):
        code, body = failure(client.CoreV1Api(api).list_namespaced_config_map, NS)
        assert code == 401 and body["reason"] == "Unauthorized"
        api.close()
    with kube.api_client() as api:
        assert client.CoreV1Api(api).list_namespaced_config_map(NS).items == []


def test_discovery_and_unknown_paths(api: client.ApiClient) -> None:
    assert client.VersionApi(api).get_code().git_version == "v1.34.0"
    assert client.CoreApi(api).get_api_versions().versions == ["v1"]
    groups = client.ApisApi(api).get_api_versions().groups
    assert "coordination.k8s.io" in [group.name for group in groups]
    core_resources = client.CoreV1Api(api).get_api_resources().resources
    assert {"configmaps", "events"} <= {resource.name for resource in core_resources}
    leases = client.CoordinationV1Api(api).get_api_resources().resources
    assert [resource.kind for resource in leases] == ["Lease"]
    code, body = raw(api, "GET", f"/api/v1/namespaces/{NS}/widgets", b"", "application/json")
    assert code == 404 and body["reason"] == "NotFound" and body["kind"] == "Status"


def test_planned_failures_hit_only_the_matching_requests(
    kube: FakeKubeServer, core: client.CoreV1Api
) -> None:
    core.create_namespaced_config_map(NS, config_map("app"))
    kube.fail_next(1, status=409, verbs=["update"], resources=["configmaps"])
    core.read_namespaced_config_map("app", NS)
    before = kube.store.objects("configmaps", NS)
    code, body = failure(core.replace_namespaced_config_map, "app", NS, config_map("app"))
    assert code == 409 and body["reason"] == "Conflict" and body["details"]["name"] == "app"
    assert kube.store.objects("configmaps", NS) == before
    core.replace_namespaced_config_map("app", NS, config_map("app", {"now": "ok"}))
    kube.fail_next(2, status=503)
    assert failure(core.read_namespaced_config_map, "app", NS)[0] == 503
    assert failure(core.list_namespaced_config_map, NS)[0] == 503
    kube.fail_next(1, status=500, verbs=["create"])
    code, body = failure(core.create_namespaced_config_map, NS, config_map("b"))
    assert code == 500 and body["reason"] == "InternalError"
    assert core.read_namespaced_config_map("app", NS).data == {"now": "ok"}


def test_a_delay_slows_every_request(kube: FakeKubeServer, core: client.CoreV1Api) -> None:
    kube.set_delay(2.0)
    with pytest.raises(HTTPError):
        core.list_namespaced_config_map(NS, _request_timeout=0.2)
    kube.set_delay(0)
    assert core.list_namespaced_config_map(NS).items == []


def test_the_store_counts_requests_and_shows_its_objects(
    kube: FakeKubeServer, core: client.CoreV1Api, leases: client.CoordinationV1Api
) -> None:
    core.create_namespaced_config_map(NS, config_map("app", {"k": "v"}))
    core.read_namespaced_config_map("app", NS)
    core.read_namespaced_config_map("app", NS)
    leases.create_namespaced_lease(NS, lease("leader"))
    failure(core.read_namespaced_config_map, "nope", NS)
    assert kube.store.requests[("get", "configmaps")] == 3
    assert kube.store.requests[("create", "configmaps")] == 1
    assert kube.store.requests[("create", "leases")] == 1
    [stored] = kube.store.objects("configmaps", NS)
    assert stored["data"] == {"k": "v"} and stored["kind"] == "ConfigMap"
    assert kube.store.objects("configmaps", "elsewhere") == []


@pytest.mark.slow
def test_the_module_serves_until_sigterm(tmp_path: Any) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.kube_api", "--port", "0", "--token", "cli"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        configuration = client.Configuration(host=url)
        configuration.api_key = {"authorization": "cli"}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        with client.ApiClient(configuration) as api:
            assert client.VersionApi(api).get_code().major == "1"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
        if process.stdout is not None:
            process.stdout.close()


def test_binary_data_round_trips_as_base64(core: client.CoreV1Api) -> None:
    payload = base64.b64encode(bytes(range(256))).decode()
    made = core.create_namespaced_config_map(
        NS, {"metadata": {"name": "bin"}, "binaryData": {"b": payload}}
    )
    assert made.binary_data == {"b": payload}
