"""The controller's Prometheus metrics, read from a real controller at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controller.metrics import ControllerMetrics
from policies.domain import Phase
from tests.controller.release_rig import RELEASE, T0, Rig, make_rig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = make_rig(tmp_path)
    yield rig
    rig.close()


def watch(rig: Rig, **options: object) -> CollectorRegistry:
    metrics = ControllerMetrics()
    metrics.watch(rig.controller, clock=rig.clock, **options)  # type: ignore[arg-type]
    return metrics.registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_phase_weight_and_step_of_each_release(rig: Rig) -> None:
    registry = watch(rig)
    assert value(registry, "coalmine_release_phase", release=RELEASE, phase="canary") is None
    rig.run(1)
    phases = {
        phase.value: value(registry, "coalmine_release_phase", release=RELEASE, phase=phase.value)
        for phase in Phase
    }
    assert phases == {phase.value: float(phase is Phase.CANARY) for phase in Phase}
    assert value(registry, "coalmine_release_canary_weight_percent", release=RELEASE) == 10.0
    assert value(registry, "coalmine_release_step", release=RELEASE) == 1.0
    assert value(registry, "coalmine_release_rollout", release=RELEASE) == 1.0


def test_decisions_and_actions_are_counted_from_the_log(rig: Rig) -> None:
    registry = watch(rig)
    rig.run(2)
    rig.controller.manual(RELEASE, "rollback", actor="sre", now=rig.now)
    decisions = {
        decision: value(registry, "coalmine_decisions_total", release=RELEASE, decision=decision)
        for decision in ("start", "rollback", "promote")
    }
    assert decisions == {"start": 1.0, "rollback": 1.0, "promote": None}
    done = {
        kind: value(registry, "coalmine_actions_total", release=RELEASE, kind=kind, status="done")
        for kind in ("set_weight", "move_label")
    }
    assert done == {"set_weight": 2.0, "move_label": 1.0}
    assert value(registry, "coalmine_actions_pending", release=RELEASE) == 0.0
    assert value(registry, "coalmine_release_phase", release=RELEASE, phase="rolled_back") == 1.0


def test_the_last_judgement_gives_estimates_bounds_verdicts_and_samples(rig: Rig) -> None:
    registry = watch(rig)
    rig.run(4)
    judgement = rig.controller.last_judgement(RELEASE)
    assert judgement is not None
    for metric in judgement.metrics:
        labels = {"release": RELEASE, "metric": metric.name}
        assert value(registry, "coalmine_metric_estimate", **labels) == metric.estimate
        assert value(registry, "coalmine_metric_lower_bound", **labels) == metric.lower
        assert value(registry, "coalmine_metric_upper_bound", **labels) == metric.upper
        assert value(registry, "coalmine_metric_samples", arm="baseline", **labels) == (
            metric.n_baseline
        )
        assert value(registry, "coalmine_metric_samples", arm="canary", **labels) == (
            metric.n_canary
        )
        verdict = metric.verdict.value
        assert value(registry, "coalmine_metric_verdict", verdict=verdict, **labels) == 1.0
    assert value(registry, "coalmine_sample_ratio_mismatch", release=RELEASE) == 0.0


def test_a_sample_ratio_mismatch_is_flagged(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, canary_share=0.5)
    try:
        registry = watch(rig)
        rig.run(60, until=Phase.PAUSED)
        assert rig.release().phase is Phase.PAUSED
        assert value(registry, "coalmine_sample_ratio_mismatch", release=RELEASE) == 1.0
        assert value(registry, "coalmine_decisions_total", release=RELEASE, decision="pause") == 1
    finally:
        rig.close()


def test_time_since_the_last_good_poll(rig: Rig) -> None:
    registry = watch(rig)
    assert value(registry, "coalmine_seconds_since_last_poll") is None
    assert value(registry, "coalmine_last_poll_failed") == 0.0
    rig.run(2)
    assert value(registry, "coalmine_seconds_since_last_poll") == 0.0
    assert value(registry, "coalmine_last_successful_poll_timestamp_seconds") == T0 + 120
    rig.traffic.down = True
    rig.run(1)
    rig.now += 30
    assert value(registry, "coalmine_seconds_since_last_poll") == 90.0
    assert value(registry, "coalmine_last_poll_failed") == 1.0


def test_langfuse_requests_policy_errors_and_notifications(rig: Rig) -> None:
    registry = watch(
        rig,
        policy_load_errors=lambda: 2,
        notifications=lambda: {"sent": 3, "failed": 1},
    )
    rig.run(3)
    rig.traffic.down = True
    rig.run(1)
    requests = {
        status: value(
            registry,
            "coalmine_langfuse_requests_total",
            endpoint="observations",
            status_class=status,
        )
        for status in ("2xx", "5xx")
    }
    assert requests == {"2xx": 2.0, "5xx": 1.0}
    rig.labels.request_counts = {("prompts", "2xx"): 4, ("observations", "2xx"): 1}  # type: ignore[attr-defined]
    assert (
        value(registry, "coalmine_langfuse_requests_total", endpoint="prompts", status_class="2xx")
        == 4.0
    )
    assert (
        value(
            registry,
            "coalmine_langfuse_requests_total",
            endpoint="observations",
            status_class="2xx",
        )
        == 3.0
    )
    assert value(registry, "coalmine_policy_load_errors_total") == 2.0
    assert value(registry, "coalmine_notifications_total", outcome="sent") == 3.0
    assert value(registry, "coalmine_notifications_total", outcome="failed") == 1.0


def test_a_source_without_request_counts_exports_none(rig: Rig) -> None:
    registry = watch(rig)
    rig.run(2)
    del rig.traffic.request_counts
    exposition = generate_latest(registry).decode()
    assert "coalmine_langfuse_requests_total{" not in exposition


def test_the_exposition_is_valid_text_format(rig: Rig) -> None:
    registry = watch(rig, policy_load_errors=lambda: 0)
    rig.run(4)
    families = {
        family.name: family
        for family in text_string_to_metric_families(generate_latest(registry).decode())
    }
    assert families["coalmine_decisions"].type == "counter"
    assert families["coalmine_release_phase"].type == "gauge"
    assert families["coalmine_policy_load_errors"].type == "counter"


def test_registering_reads_nothing_and_a_registry_watches_one_controller(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_reads() -> None:
        raise AssertionError("registering read the state")

    monkeypatch.setattr(rig.state, "releases", no_reads)
    metrics = ControllerMetrics(CollectorRegistry(auto_describe=True))
    metrics.watch(rig.controller)
    with pytest.raises(RuntimeError):
        metrics.watch(rig.controller)
