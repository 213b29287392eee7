"""The controller's Prometheus metrics, read from a real controller at scrape time."""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controller.judge import MetricResult, Scale, Verdict
from controller.metrics import (
    DIFFERENCE_RATIO,
    DIFFERENCE_SCORE,
    DIFFERENCE_SECONDS,
    RELATIVE_DIFFERENCE,
    ControllerMetrics,
    DifferenceUnit,
    difference_unit,
)
from controller.samples import Cursors, Poll
from policies import Policy, load_policy
from policies.domain import Arm, Phase
from tests.controller.release_rig import POLICY, RELEASE, T0, Rig, make_rig


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
    assert value(registry, "coalmine_release_canary_weight_ratio", release=RELEASE) == 0.1
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
    # errors is an error rate, helpfulness a numeric score
    units = {"errors": "ratio", "helpfulness": "score"}
    for metric in judgement.metrics:
        labels = {"release": RELEASE, "metric": metric.name}
        unit = units[metric.name]
        for name, figure in (
            (f"coalmine_metric_difference_{unit}", metric.estimate),
            (f"coalmine_metric_difference_lower_bound_{unit}", metric.lower),
            (f"coalmine_metric_difference_upper_bound_{unit}", metric.upper),
        ):
            assert figure is not None
            assert value(registry, name, **labels) == figure
        assert value(registry, "coalmine_metric_samples", arm="baseline", **labels) == (
            metric.n_baseline
        )
        assert value(registry, "coalmine_metric_samples", arm="canary", **labels) == (
            metric.n_canary
        )
        verdict = metric.verdict.value
        assert value(registry, "coalmine_metric_verdict", verdict=verdict, **labels) == 1.0
    assert value(registry, "coalmine_sample_ratio_mismatch", release=RELEASE) == 0.0


SLOWER_AND_DEARER = """\
    - {name: p95, source: latency, tolerance: 500}
    - {name: p95_relative, source: latency, tolerancePercent: 20}
    - {name: cost, source: cost, tolerancePercent: 10}
"""


def slower_and_dearer(rig: Rig, tmp_path: Path) -> None:
    """The rig's policy with latency and cost metrics; the canary's requests take 600 ms
    instead of 400 and cost twice as much."""
    (tmp_path / "policy").mkdir()
    path = tmp_path / "policy" / "support.yaml"
    path.write_text(POLICY + SLOWER_AND_DEARER, encoding="utf-8")
    rig.policies[RELEASE] = load_policy(path)
    poll = rig.traffic.poll

    def canary_slower(releases: Mapping[str, Policy], cursors: Cursors | None, now: float) -> Poll:
        found = poll(releases, cursors, now)
        traces = tuple(
            replace(trace, latency_ms=600.0, cost_usd=0.002) if trace.arm is Arm.CANARY else trace
            for trace in found.traces
        )
        return replace(found, traces=traces)

    rig.traffic.poll = canary_slower  # type: ignore[method-assign]


def test_latency_goes_out_in_seconds_and_cost_as_a_relative_difference(
    rig: Rig, tmp_path: Path
) -> None:
    slower_and_dearer(rig, tmp_path)
    registry = watch(rig)
    rig.run(4)
    judgement = rig.controller.last_judgement(RELEASE)
    assert judgement is not None
    results = {metric.name: metric for metric in judgement.metrics}
    p95, relative, cost = results["p95"], results["p95_relative"], results["cost"]
    # latency sketches hold quantiles to within 1%
    assert p95.estimate == pytest.approx(200.0, abs=10.0)  # ms, as the judge has it
    labels = {"release": RELEASE, "metric": "p95"}
    for name, figure in (
        ("coalmine_metric_difference_seconds", p95.estimate),
        ("coalmine_metric_difference_lower_bound_seconds", p95.lower),
        ("coalmine_metric_difference_upper_bound_seconds", p95.upper),
    ):
        assert figure is not None
        assert value(registry, name, **labels) == pytest.approx(figure / 1000.0)
    assert value(registry, "coalmine_metric_difference_seconds", **labels) == pytest.approx(
        0.2, abs=0.01
    )
    for metric, expected in ((relative, 0.5), (cost, 1.0)):
        labels = {"release": RELEASE, "metric": metric.name}
        for name, figure in (
            ("coalmine_metric_relative_difference_ratio", metric.estimate),
            ("coalmine_metric_relative_difference_lower_bound_ratio", metric.lower),
            ("coalmine_metric_relative_difference_upper_bound_ratio", metric.upper),
        ):
            assert figure is not None
            assert value(registry, name, **labels) == pytest.approx(figure - 1.0)
        exported = value(registry, "coalmine_metric_relative_difference_ratio", **labels)
        assert exported == pytest.approx(expected, abs=0.02)


def test_each_metric_goes_out_in_one_unit_only(rig: Rig, tmp_path: Path) -> None:
    slower_and_dearer(rig, tmp_path)
    registry = watch(rig)
    rig.run(4)
    families = text_string_to_metric_families(generate_latest(registry).decode())
    units: dict[str, list[str]] = {}
    for family in families:
        if "difference" in family.name and "bound" not in family.name:
            for sample in family.samples:
                units.setdefault(sample.labels["metric"], []).append(family.name)
    assert units == {
        "errors": ["coalmine_metric_difference_ratio"],
        "helpfulness": ["coalmine_metric_difference_score"],
        "p95": ["coalmine_metric_difference_seconds"],
        "p95_relative": ["coalmine_metric_relative_difference_ratio"],
        "cost": ["coalmine_metric_relative_difference_ratio"],
    }


def _result(source: str, scale: Scale = Scale.DIFFERENCE) -> MetricResult:
    return MetricResult(
        name="m",
        source=source,
        verdict=Verdict.PASS,
        critical=False,
        reason="",
        scale=scale,
        estimate=0.0,
        lower=0.0,
        upper=0.0,
        n_baseline=1,
        n_canary=1,
        n_baseline_step=1,
        n_canary_step=1,
        log_evalue=0.0,
        log_threshold=1.0,
    )


@pytest.mark.parametrize(
    ("source", "scale", "indicator", "unit"),
    [
        ("error_rate", Scale.DIFFERENCE, True, DIFFERENCE_RATIO),
        ("trace_error_rate", Scale.DIFFERENCE, True, DIFFERENCE_RATIO),
        ("score", Scale.DIFFERENCE, True, DIFFERENCE_RATIO),  # boolean, categorical
        ("score", Scale.DIFFERENCE, False, DIFFERENCE_SCORE),  # numeric
        ("score", Scale.DIFFERENCE, None, None),  # its kind no longer known
        ("latency", Scale.DIFFERENCE, False, DIFFERENCE_SECONDS),
        ("latency", Scale.RATIO, False, RELATIVE_DIFFERENCE),
        ("cost", Scale.RATIO, False, RELATIVE_DIFFERENCE),
    ],
)
def test_the_unit_of_each_kind_of_metric(
    source: str, scale: Scale, indicator: bool | None, unit: DifferenceUnit | None
) -> None:
    assert difference_unit(_result(source, scale), indicator) is unit


def test_the_build_info_is_1_with_the_version(rig: Rig) -> None:
    registry = watch(rig)
    version = importlib.metadata.version("coalmine")
    labels = {"version": version, "python_version": platform.python_version()}
    assert value(registry, "coalmine_build_info", **labels) == 1.0


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
