"""Kubernetes Events: one for every decision and action, on the pod or on the object the
policy names, repeats counted on the first event, a slow or failing API server never in
the control loop's way."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from controller.cluster.events import KubeEventRecorder, ObjectRef
from tests.cluster.cluster_support import NAMESPACE, wait_until

POD = ObjectRef("v1", "Pod", "shop-app-7d9f-abcde", "6f1c6b8e-0000-4000-8000-000000000001")


def events(api: Any) -> list[Any]:
    return client.CoreV1Api(api).list_namespaced_event(NAMESPACE).items


def recorder(api: Any, **options: Any) -> KubeEventRecorder:
    return KubeEventRecorder(api, NAMESPACE, instance=POD.name, pod=POD, **options)


def test_an_event_names_the_pod_the_release_and_what_happened(api: Any) -> None:
    sender = recorder(api)
    sender.record("support", "RolledBack", "rollback by controller: errors 9% > 1%", warning=True)
    sender.close()
    [event] = events(api)
    assert event.involved_object.kind == "Pod"
    assert event.involved_object.name == POD.name
    assert event.involved_object.uid == POD.uid
    assert event.involved_object.namespace == NAMESPACE
    assert (event.reason, event.type, event.count) == ("RolledBack", "Warning", 1)
    assert event.message == "release support: rollback by controller: errors 9% > 1%"
    assert event.source.component == "coalmine"
    assert event.reporting_instance == POD.name
    assert event.metadata.labels == {"coalmine.dev/release": "support"}


def test_events_go_on_the_object_the_policy_names(api: Any) -> None:
    target = ObjectRef("apps/v1", "Deployment", "support-agent")
    sender = recorder(api, targets=lambda: {"support": target})
    sender.record("support", "Promoted", "promote by controller: better")
    sender.record("billing", "Started", "start by controller: candidate found")
    sender.close()
    placed = {(e.involved_object.kind, e.involved_object.name, e.reason) for e in events(api)}
    assert placed == {
        ("Deployment", "support-agent", "Promoted"),
        ("Pod", POD.name, "Started"),
    }


def test_a_repeated_event_raises_the_count_of_the_first(api: Any) -> None:
    now = [0.0]
    sender = recorder(api, clock=lambda: now[0])
    for _ in range(3):
        sender.record("support", "ActionRetrying", "label canary to version 3: 503", warning=True)
    now[0] = 601.0  # past the repeat window: a new event
    sender.record("support", "ActionRetrying", "label canary to version 3: 503", warning=True)
    sender.close()
    counts = sorted(event.count for event in events(api))
    assert counts == [1, 3]


def test_an_unreachable_api_server_loses_the_events_but_never_blocks(api: Any, kube: Any) -> None:
    kube.set_unavailable(True)
    sender = recorder(api)
    for index in range(5):
        sender.record("support", "Advanced", f"advance {index}")  # returns at once
    wait_until(lambda: sender.counts["failed"] == 5, what="the sends to fail")
    kube.set_unavailable(False)
    sender.record("support", "Advanced", "advance 5")
    sender.close()
    assert [event.message for event in events(api)] == ["release support: advance 5"]
    assert sender.counts == {"sent": 1, "failed": 5, "dropped": 0}
