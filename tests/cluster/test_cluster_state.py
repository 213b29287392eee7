"""The controller's state in ConfigMaps: what a restarted or new leader reads back, a
bounded decision log that keeps its counts, retries on 409 that never repeat a decision,
and no write at all from a replica that is not the leader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controller.cluster.release_configmaps import (
    DECISIONS_KEPT,
    EVIDENCE_KEPT,
    ClusterState,
)
from controller.errors import NotLeaderError, StaleStateError
from controller.lifecycle import ActionKind, ReleaseState
from controller.release_store import ActionStatus, LabelMove
from policies.domain import Phase
from tests.cluster.cluster_support import NAMESPACE

PREFIX = "shop-app"


def state(api: Any, tmp_path: Path, name: str = "cache", **options: Any) -> ClusterState:
    return ClusterState(tmp_path / f"{name}.db", api, NAMESPACE, PREFIX, **options)


def running(name: str = "support", **changes: Any) -> ReleaseState:
    fields: dict[str, Any] = {
        "name": name,
        "phase": Phase.CANARY,
        "step_starts": (1000.0,),
        "canary_weight": 10.0,
        "stable_version": 3,
        "candidate_version": 4,
    }
    fields.update(changes)
    return ReleaseState(**fields)


def configmap(api: Any, name: str) -> Any:
    return client.CoreV1Api(api).read_namespaced_config_map(name, NAMESPACE)


def test_another_replica_reads_back_releases_decisions_actions_and_label_moves(
    api: Any, tmp_path: Path
) -> None:
    leader = state(api, tmp_path, "leader")
    leader.save_release(ReleaseState(name="support", phase=Phase.PENDING))
    decision = leader.decide(
        running(),
        at=1000.0,
        decision="start",
        actor="controller",
        reason="candidate found",
        evidence={"metrics": []},
        actions=[
            (ActionKind.SET_WEIGHT, {"weight": 10.0}),
            (ActionKind.MOVE_LABEL, {"prompt": "p", "label": "canary", "version": 4}),
        ],
    )
    weight, label = leader.pending_actions("support")
    leader.finish_action(weight, at=1001.0)
    leader.observe_action(label, {"from": 3})
    move = LabelMove("support", "p", "canary", 3, 4, 1002.0, "controller", "candidate found")
    leader.finish_action(label, at=1002.0, label_move=move)

    other = state(api, tmp_path, "standby")
    assert [release.name for release in other.releases()] == ["support"]
    assert other.release("support") == running()
    [record] = other.decisions("support")
    assert (record.id, record.decision, record.phase, record.evidence) == (
        decision,
        "start",
        Phase.CANARY,
        {"metrics": []},
    )
    assert [(a.kind, a.status, a.decision_id) for a in other.actions("support")] == [
        (ActionKind.SET_WEIGHT, ActionStatus.DONE, decision),
        (ActionKind.MOVE_LABEL, ActionStatus.DONE, decision),
    ]
    assert other.actions("support")[1].observed == {"from": 3}
    assert other.label_moves("support") == [move]
    assert other.pending_actions() == []
    stored = configmap(api, f"{PREFIX}-support-state")
    assert stored.metadata.labels["app.kubernetes.io/managed-by"] == "coalmine"
    assert set(stored.data) == {"release.json", "decisions.json", "actions.json", "labelMoves.json"}


@pytest.mark.slow
def test_the_decision_log_stays_bounded_and_keeps_its_counts(api: Any, tmp_path: Path) -> None:
    writer = state(api, tmp_path)
    evidence = {"metrics": [{"name": "helpfulness", "worstTraces": ["t" * 30] * 20}]}
    for index in range(DECISIONS_KEPT + 150):
        writer.decide(
            running(step=index % 3),
            at=1000.0 + index,
            decision="advance" if index % 5 else "pause",
            actor="controller",
            reason=f"look {index}",
            evidence=evidence,
            actions=[(ActionKind.SET_WEIGHT, {"weight": 10.0})],
        )
        for action in writer.pending_actions("support"):
            writer.finish_action(action, at=1000.0 + index)
    kept = writer.decisions("support")
    assert len(kept) == DECISIONS_KEPT
    assert kept[-1].reason == f"look {DECISIONS_KEPT + 149}"
    assert all(record.evidence == {} for record in kept[:-EVIDENCE_KEPT])
    assert all(record.evidence == evidence for record in kept[-EVIDENCE_KEPT:])
    counts = writer.decision_counts("support")
    assert counts == {"advance": 280, "pause": 70}
    assert writer.action_counts("support") == {("set_weight", "done"): 350}
    assert [record.id for record in writer.decisions("support", limit=2)] == [349, 350]
    stored = configmap(api, f"{PREFIX}-support-state")
    folded = json.loads(stored.data["decisions.json"])["folded"]
    assert folded["count"] == 150 and folded["firstAt"] == 1000.0


def test_a_log_of_large_evidence_stays_under_the_configmap_limit(api: Any, tmp_path: Path) -> None:
    writer = state(api, tmp_path)
    large = {"worstTraces": ["x" * 1000] * 60}  # 60 kB a decision
    for index in range(40):
        writer.decide(
            running(),
            at=float(index),
            decision="continue",
            actor="controller",
            reason="look",
            evidence=large,
            actions=[],
        )
    stored = configmap(api, f"{PREFIX}-support-state")
    size = sum(len(key) + len(value.encode()) for key, value in stored.data.items())
    assert size < 1024 * 1024
    assert writer.decisions("support")[-1].evidence == large
    assert sum(writer.decision_counts("support").values()) == 40


def test_a_decision_on_a_release_another_writer_changed_is_refused(
    api: Any, tmp_path: Path
) -> None:
    ours, theirs = state(api, tmp_path, "ours"), state(api, tmp_path, "theirs")
    ours.save_release(running())
    assert ours.release("support") == running()  # read: cached
    theirs.decide(
        running(phase=Phase.ROLLED_BACK, canary_weight=0.0),
        at=2000.0,
        decision="rollback",
        actor="controller",
        reason="errors",
        evidence={},
        actions=[],
    )
    with pytest.raises(StaleStateError, match="changed by another writer"):
        ours.decide(
            running(step=1, canary_weight=30.0),
            at=2001.0,
            decision="advance",
            actor="controller",
            reason="on stale state",
            evidence={},
            actions=[(ActionKind.SET_WEIGHT, {"weight": 30.0})],
        )
    fresh = state(api, tmp_path, "fresh")
    assert [record.decision for record in fresh.decisions("support")] == ["rollback"]
    assert fresh.pending_actions("support") == []


def test_finishing_an_action_survives_a_conflict_and_records_its_move_once(
    api: Any, tmp_path: Path, kube: Any
) -> None:
    writer = state(api, tmp_path)
    writer.decide(
        running(),
        at=1.0,
        decision="promote",
        actor="controller",
        reason="better",
        evidence={},
        actions=[(ActionKind.MOVE_LABEL, {"prompt": "p", "label": "production", "version": 4})],
    )
    [action] = writer.pending_actions("support")
    kube.fail_next(1, status=409, verbs=["update"], resources=["configmaps"])
    move = LabelMove("support", "p", "production", 3, 4, 2.0, "controller", "better")
    writer.finish_action(action, at=2.0, label_move=move)
    writer.finish_action(action, at=3.0, label_move=move)  # a retry after a lost answer
    reader = state(api, tmp_path, "reader")
    assert reader.label_moves("support") == [move]
    assert [a.status for a in reader.actions("support")] == [ActionStatus.DONE]


def test_a_replica_that_is_not_the_leader_writes_nothing(
    api: Any, tmp_path: Path, kube: Any
) -> None:
    def fence() -> None:
        raise NotLeaderError("pod-b does not hold lease shop/coalmine-controller", "pod-a")

    standby = state(api, tmp_path, fence=fence)
    before = kube.store.objects("configmaps", NAMESPACE)
    with pytest.raises(NotLeaderError):
        standby.save_release(running())
    with pytest.raises(NotLeaderError):
        standby.decide(
            running(),
            at=1.0,
            decision="start",
            actor="controller",
            reason="",
            evidence={},
            actions=[],
        )
    assert kube.store.objects("configmaps", NAMESPACE) == before
    assert standby.releases() == []


def test_a_deleted_release_leaves_the_index(api: Any, tmp_path: Path) -> None:
    writer = state(api, tmp_path)
    writer.save_release(running("support"))
    writer.save_release(running("billing"))
    assert [release.name for release in writer.releases()] == ["billing", "support"]
    writer.delete_release("support")
    writer.refresh()
    assert [release.name for release in writer.releases()] == ["billing"]


def test_a_state_configmap_that_is_not_coalmine_state_is_named_in_the_error(
    api: Any, tmp_path: Path
) -> None:
    client.CoreV1Api(api).create_namespaced_config_map(
        NAMESPACE,
        {"metadata": {"name": f"{PREFIX}-support-state"}, "data": {"decisions.json": "[1, 2"}},
    )
    with pytest.raises(ValueError, match=f"configmap {NAMESPACE}/{PREFIX}-support-state"):
        state(api, tmp_path).decisions("support")
