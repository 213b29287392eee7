"""The controller's Prometheus metrics, read from the controller when Prometheus scrapes.

Nothing here is updated by the loop: every figure is read at scrape time from what the
controller already keeps (the state file, the last judgement of each release, the time
of the last good poll), so the metrics can never disagree with the state, and counters
derived from the decision log and the action journal survive a restart.

Labels stay of low cardinality: release (a handful per controller), phase (seven),
decision (seven), action kind and status (two each), metric (a few per policy), arm (two),
Langfuse endpoint (a few) and status class (five).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from coalmine.shared.build_info import build_labels
from controller.judge import CheckState, Judgement, MetricResult, Scale, Verdict
from controller.lifecycle import RUNGS, ReleaseState
from controller.loop import Controller
from controller.release_store import ActionStatus
from controller.source import health_of
from controller.source.health import ReadVerdict
from policies.domain import Phase
from policies.model import MetricSource

SAMPLE_RATIO_CHECK: Final = "sample_ratio"
"""Name of the judge's sample-ratio guard (controller.judge.decide)."""
TRACE_LOSS_CHECK: Final = "trace_loss"
"""Name of the judge's trace-loss guard, made only on the proxies' counts."""

log = logging.getLogger("coalmine.controller")

FINISHED_ACTIONS: Final = (ActionStatus.DONE, ActionStatus.FAILED)

BUILD: Final = build_labels()
BUILD_LABELS: Final = tuple(BUILD)


@dataclass(frozen=True, slots=True)
class DifferenceUnit:
    """Where a metric's estimate and bounds are exported: the key of the family (its
    bounds' are the key plus ``_lower`` and ``_upper``) and the conversion from the
    judge's figure to that family's unit."""

    family: str
    convert: Callable[[float], float]


def _as_is(value: float) -> float:
    return value


DIFFERENCE_SECONDS: Final = DifferenceUnit("difference_seconds", lambda ms: ms / 1000.0)
DIFFERENCE_RATIO: Final = DifferenceUnit("difference_ratio", _as_is)
DIFFERENCE_SCORE: Final = DifferenceUnit("difference_score", _as_is)
RELATIVE_DIFFERENCE: Final = DifferenceUnit("relative_difference", lambda ratio: ratio - 1.0)


def difference_unit(metric: MetricResult, indicator: bool | None) -> DifferenceUnit | None:
    """The family of one judged metric: latency compared by a tolerance in ms goes out
    in seconds; error rates and 0/1 scores (boolean, categorical: ``indicator``) as a
    difference of shares; numeric scores in the score's own scale; cost, and latency
    compared by tolerancePercent (the judge's ratio scale), as canary over baseline
    minus 1. None for a score whose kind is unknown (its series no longer held)."""
    if metric.scale is Scale.RATIO:
        return RELATIVE_DIFFERENCE
    if metric.source == MetricSource.LATENCY:
        return DIFFERENCE_SECONDS
    if metric.source in (MetricSource.ERROR_RATE, MetricSource.TRACE_ERROR_RATE) or indicator:
        return DIFFERENCE_RATIO
    return None if indicator is None else DIFFERENCE_SCORE


class ControllerCollector(Collector):
    """Reads a controller at scrape time.

    It takes neither the controller's lock nor any other that a tick holds for long, so
    a scrape never waits for a slow poll of Langfuse.
    """

    def __init__(
        self,
        controller: Controller,
        *,
        clock: Callable[[], float] = time.time,
        policy_load_errors: Callable[[], int] | None = None,
        notifications: Callable[[], Mapping[str, int]] | None = None,
        leader: Callable[[], bool] | None = None,
        aggregates_deleted: Callable[[], int] | None = None,
    ) -> None:
        self.controller = controller
        self.aggregates_deleted = aggregates_deleted
        self.leader = leader
        """Cluster mode: whether this replica leads; only the leader exports the figures
        of polling Langfuse (a standby does not poll)."""
        self.clock = clock
        self.policy_load_errors = policy_load_errors
        self.notifications = notifications

    def describe(self) -> Iterable[Metric]:
        # Without describe() the registry would collect() once at registration, reading
        # the controller before it is ready.
        return list(self._families().values())

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        families["build"].add_metric(list(BUILD.values()), 1.0)
        try:
            releases = self.controller.state.releases()
            self._releases(releases, families)
        except Exception as error:  # the state store is outside the process (cluster mode)
            log.warning("metrics: cannot read the releases' state: %s", error)
            releases = []
        for release in releases:
            judgement = self.controller.last_judgement(release.name)
            if judgement is not None:
                _judgement(release.name, judgement, self._indicators(release.name), families)
                self._proxies_counting(release.name, families["proxies_counting"])
        leading = self.leader is None or self.leader()
        if self.leader is not None:
            families["leader"].add_metric([], float(leading))
        if leading:
            self._requests(families["langfuse_requests"])
            self._poll(families)
            self._reads(families)
        if self.policy_load_errors is not None:
            families["policy_load_errors"].add_metric([], self.policy_load_errors())
        if self.notifications is not None:
            for outcome, count in sorted(self.notifications().items()):
                families["notifications"].add_metric([outcome], count)
        if self.aggregates_deleted is not None:
            families["aggregates_deleted"].add_metric([], self.aggregates_deleted())
        yield from families.values()

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily | CounterMetricFamily]:
        gauge, counter = GaugeMetricFamily, CounterMetricFamily
        return {
            "phase": gauge(
                "coalmine_release_phase",
                "1 for the phase each release is in, 0 for the others.",
                labels=["release", "phase"],
            ),
            "build": gauge(
                "coalmine_build_info",
                "Always 1: the coalmine version and the Python version of this controller.",
                labels=list(BUILD_LABELS),
            ),
            "weight": gauge(
                "coalmine_release_canary_weight_ratio",
                "Canary weight the controller wants in the routing table, by release, from "
                "0 to 1 (a weight of 10 in the policy is 0.1).",
                labels=["release"],
            ),
            "step": gauge(
                "coalmine_release_step",
                "Current step of each release, counted from 1; 0 before its canary starts.",
                labels=["release"],
            ),
            "route_repairs": counter(
                "coalmine_route_repairs",
                "Times a release's routes were found different from what its state wants "
                "(a routing table or route changed behind the controller's back) and put "
                "back, since the controller started, by release.",
                labels=["release"],
            ),
            "rung_pairs": gauge(
                "coalmine_rung_pairs",
                "Pairs compared by the rung a rollout stands at (dataset items scored on "
                "both arms, or shadow copies scored with their primaries), by release and "
                "rung.",
                labels=["release", "rung"],
            ),
            "rung_unscored": gauge(
                "coalmine_rung_unscored_items",
                "Dataset items the dataset rung a rollout stands at has no pair of scores "
                "for (an evaluator that failed, a judge that never answered), by release.",
                labels=["release"],
            ),
            "rollout": gauge(
                "coalmine_release_rollout",
                "Number of each release's current (or last) rollout, counted from 1; 0 "
                "before its first. A change means a new candidate started.",
                labels=["release"],
            ),
            "decisions": counter(
                "coalmine_decisions",
                "Decisions in the decision log (start, advance, promote, rollback, pause, "
                "resume, abort, await_approval, approve), by release.",
                labels=["release", "decision"],
            ),
            "actions": counter(
                "coalmine_actions",
                "Finished actions (label moves, routing weight changes) by release, kind "
                "and status (done or failed).",
                labels=["release", "kind", "status"],
            ),
            "pending": gauge(
                "coalmine_actions_pending",
                "Journalled actions not yet carried out (waiting for a retry), by release.",
                labels=["release"],
            ),
            **_difference_families(),
            "verdict": gauge(
                "coalmine_metric_verdict",
                "1 for each metric's verdict at the last look, 0 for the others.",
                labels=["release", "metric", "verdict"],
            ),
            "samples": gauge(
                "coalmine_metric_samples",
                "Observations compared at the last look, all steps, by metric and arm.",
                labels=["release", "metric", "arm"],
            ),
            "srm": gauge(
                "coalmine_sample_ratio_mismatch",
                "1 when the last look found the traffic split inconsistent with the weights.",
                labels=["release"],
            ),
            "proxies_counting": gauge(
                "coalmine_release_proxies_counting",
                "Proxies whose counts of the release were read at its last look (absent "
                "for a release judged on Langfuse traces).",
                labels=["release"],
            ),
            "trace_loss": gauge(
                "coalmine_trace_loss_detected",
                "1 when the last look found the canary's requests losing their traces more "
                "often than the baseline's (absent when traffic is not counted by proxies).",
                labels=["release"],
            ),
            "langfuse_requests": counter(
                "coalmine_langfuse_requests",
                "Requests made to Langfuse by endpoint and status class (2xx...5xx, or timeout, "
                "connection, error when no answer came).",
                labels=["endpoint", "status_class"],
            ),
            "leader": gauge(
                "coalmine_controller_leader",
                "Cluster mode: 1 on the replica that holds the Lease and acts, 0 on standbys.",
            ),
            "since_poll": gauge(
                "coalmine_seconds_since_last_poll",
                "Seconds since the last successful poll of Langfuse (absent before the first).",
            ),
            "last_poll": gauge(
                "coalmine_last_successful_poll_timestamp_seconds",
                "When the last successful poll of Langfuse ran, seconds since the epoch.",
            ),
            "poll_failing": gauge(
                "coalmine_last_poll_failed",
                "1 when the last poll of Langfuse failed, 0 otherwise.",
            ),
            "poll_lag": gauge(
                "coalmine_langfuse_poll_lag_seconds",
                "How far behind now the Langfuse read cursors are (absent before the first poll).",
            ),
            "needed": gauge(
                "coalmine_langfuse_requests_needed_per_minute",
                "Estimate of the Langfuse requests a minute needed to keep up with the "
                "current traffic at the current poll interval (absent until two polls).",
            ),
            "budget": gauge(
                "coalmine_langfuse_request_budget_per_minute",
                "Langfuse requests a minute the controller allows itself "
                "(COALMINE_REQUESTS_PER_MINUTE).",
            ),
            "starved": gauge(
                "coalmine_langfuse_reads_starved",
                "1 when the request budget is too small to read Langfuse at the current "
                "traffic, 0 otherwise.",
            ),
            "score_type_mismatches": counter(
                "coalmine_score_type_mismatches",
                "Scores whose type cannot serve the metric that reads them (left out of "
                "the judgement), by release and metric.",
                labels=["release", "metric"],
            ),
            "policy_load_errors": counter(
                "coalmine_policy_load_errors",
                "Policy files that could not be loaded (the last good version stays in force).",
            ),
            "notifications": counter(
                "coalmine_notifications",
                "Notifications by outcome: sent, failed (after the retries), rejected by the "
                "receiver, dropped (queue full or closed).",
                labels=["outcome"],
            ),
            "aggregates_deleted": counter(
                "coalmine_aggregates_configmaps_deleted",
                "Cluster mode: proxy-count ConfigMaps deleted because every minute they held "
                "was past the retention (their proxies are gone).",
            ),
        }

    def _releases(
        self,
        releases: Iterable[ReleaseState],
        families: Mapping[str, GaugeMetricFamily | CounterMetricFamily],
    ) -> None:
        state = self.controller.state
        for release in releases:
            name = release.name
            for phase in Phase:
                families["phase"].add_metric([name, phase.value], float(phase is release.phase))
            families["weight"].add_metric([name], release.canary_weight / 100.0)
            started = release.started_at is not None
            families["step"].add_metric([name], release.step + 1 if started else 0)
            families["rollout"].add_metric([name], release.rollout)
            self._rung(release, families)
            families["route_repairs"].add_metric(
                [name], float(self.controller.route_repairs.get(name, 0))
            )
            for decision, count in sorted(state.decision_counts(name).items()):
                families["decisions"].add_metric([name, decision], count)
            pending = 0
            for (kind, status), count in sorted(state.action_counts(name).items()):
                if status == ActionStatus.PENDING.value:
                    pending += count
                elif ActionStatus(status) in FINISHED_ACTIONS:
                    families["actions"].add_metric([name, kind, status], count)
            families["pending"].add_metric([name], pending)

    def _rung(
        self,
        release: ReleaseState,
        families: Mapping[str, GaugeMetricFamily | CounterMetricFamily],
    ) -> None:
        view = self.controller.rungs.view_of(release)
        if view is None or release.phase not in RUNGS:
            return
        rung = str(view.get("rung"))
        families["rung_pairs"].add_metric([release.name, rung], float(view.get("pairs") or 0))
        if rung == Phase.DATASET.value:
            families["rung_unscored"].add_metric([release.name], float(_unscored(view)))

    def _indicators(self, release: str) -> Mapping[str, bool]:
        """Per metric judged: whether its observations are 0/1 (a rate)."""
        live = self.controller.live.get(release)
        if live is None:
            return {}
        return {name: series.indicator for name, series in live.evidence.series.items()}

    def _proxies_counting(
        self, release: str, family: CounterMetricFamily | GaugeMetricFamily
    ) -> None:
        live = self.controller.live.get(release)
        if live is not None and live.evidence.traffic_from_proxy:
            family.add_metric([release], len(live.proxies))

    def _requests(self, family: CounterMetricFamily | GaugeMetricFamily) -> None:
        # the sample source and the label mover each count their own requests
        total: Counter[tuple[str, str]] = Counter()
        for client in (self.controller.source, self.controller.labels):
            counts: Mapping[tuple[str, str], int] | None = getattr(client, "request_counts", None)
            if counts is not None:
                total.update(dict(counts))
        for (endpoint, status_class), count in sorted(total.items()):
            family.add_metric([endpoint, status_class], count)

    def _poll(self, families: Mapping[str, GaugeMetricFamily | CounterMetricFamily]) -> None:
        last_ok = self.controller.last_poll_ok
        if last_ok is not None:
            families["since_poll"].add_metric([], max(0.0, self.clock() - last_ok))
            families["last_poll"].add_metric([], last_ok)
        failing = self.controller.last_poll_error is not None
        families["poll_failing"].add_metric([], float(failing))

    def _reads(self, families: Mapping[str, GaugeMetricFamily | CounterMetricFamily]) -> None:
        try:
            health = health_of(self.controller.source, self.clock())
        except Exception as error:  # a scrape never fails for one figure
            log.warning("metrics: cannot read the sample source's health: %s", error)
            return
        if health is None:
            return
        reads = health.reads
        if reads.lag_seconds is not None:
            families["poll_lag"].add_metric([], reads.lag_seconds)
        if reads.requests_needed_per_minute is not None:
            families["needed"].add_metric([], reads.requests_needed_per_minute)
        if reads.budget_per_minute is not None:
            families["budget"].add_metric([], reads.budget_per_minute)
        families["starved"].add_metric([], float(reads.verdict is ReadVerdict.STARVED))
        for (release, metric), count in sorted(health.score_type_mismatch_counts.items()):
            families["score_type_mismatches"].add_metric([release, metric], count)


def _judgement(
    release: str,
    judgement: Judgement,
    indicators: Mapping[str, bool],
    families: Mapping[str, GaugeMetricFamily | CounterMetricFamily],
) -> None:
    for metric in judgement.metrics:
        labels = [release, metric.name]
        unit = difference_unit(metric, indicators.get(metric.name))
        if unit is not None:
            for bound, value in (
                ("", metric.estimate),
                ("_lower", metric.lower),
                ("_upper", metric.upper),
            ):
                # an unknown figure is left out rather than exported as NaN
                if value is not None and not math.isnan(value):
                    families[unit.family + bound].add_metric(labels, unit.convert(value))
        for verdict in Verdict:
            families["verdict"].add_metric(
                [*labels, verdict.value], float(verdict is metric.verdict)
            )
        families["samples"].add_metric([*labels, "baseline"], metric.n_baseline)
        families["samples"].add_metric([*labels, "canary"], metric.n_canary)
    mismatch = any(
        check.name == SAMPLE_RATIO_CHECK and check.state is CheckState.FAILED
        for check in judgement.checks
    )
    families["srm"].add_metric([release], float(mismatch))
    for check in judgement.checks:
        if check.name == TRACE_LOSS_CHECK:
            families["trace_loss"].add_metric([release], float(check.state is CheckState.FAILED))


def _difference_families() -> dict[str, GaugeMetricFamily]:
    """Each metric's canary-against-baseline figure at the last look, in one family per
    unit, and its two confidence-sequence bounds in families of their own: an estimate
    and its bounds add up to nothing, so they are not the values of one family's label,
    and ``coalmine_metric_difference_lower_bound_ratio > 0.02`` reads as it is meant."""
    labels = ["release", "metric"]
    seconds = GaugeMetricFamily(
        "coalmine_metric_difference_seconds",
        "At the last look, for each latency metric compared by an absolute tolerance: the "
        "canary's quantile minus the baseline's, in seconds.",
        labels=labels,
    )
    ratio = GaugeMetricFamily(
        "coalmine_metric_difference_ratio",
        "At the last look, for each rate metric (error_rate, trace_error_rate, boolean and "
        "categorical scores): the canary's share minus the baseline's, shares from 0 to 1.",
        labels=labels,
    )
    score = GaugeMetricFamily(
        "coalmine_metric_difference_score",
        "At the last look, for each numeric score metric: the canary's mean minus the "
        "baseline's, unitless, in the score's own scale (a 1-5 rating differs by at most 4).",
        labels=labels,
    )
    relative = GaugeMetricFamily(
        "coalmine_metric_relative_difference_ratio",
        "At the last look, for each cost metric and each latency metric compared by "
        "tolerancePercent: canary over baseline minus 1 (0.1: the canary is 10% higher, "
        "as tolerancePercent 10 allows).",
        labels=labels,
    )
    return {
        "difference_seconds": seconds,
        "difference_seconds_lower": _bound(
            "coalmine_metric_difference_lower_bound_seconds", seconds
        ),
        "difference_seconds_upper": _bound(
            "coalmine_metric_difference_upper_bound_seconds", seconds
        ),
        "difference_ratio": ratio,
        "difference_ratio_lower": _bound("coalmine_metric_difference_lower_bound_ratio", ratio),
        "difference_ratio_upper": _bound("coalmine_metric_difference_upper_bound_ratio", ratio),
        "difference_score": score,
        "difference_score_lower": _bound("coalmine_metric_difference_lower_bound_score", score),
        "difference_score_upper": _bound("coalmine_metric_difference_upper_bound_score", score),
        "relative_difference": relative,
        "relative_difference_lower": _bound(
            "coalmine_metric_relative_difference_lower_bound_ratio", relative
        ),
        "relative_difference_upper": _bound(
            "coalmine_metric_relative_difference_upper_bound_ratio", relative
        ),
    }


def _bound(name: str, estimate: GaugeMetricFamily) -> GaugeMetricFamily:
    side = "Lower" if "_lower_bound_" in name else "Upper"
    return GaugeMetricFamily(
        name,
        f"{side} confidence-sequence bound (level 1 - alpha) of {estimate.name} at the last look.",
        labels=["release", "metric"],
    )


class ControllerMetrics:
    """The controller's metrics registry.

    ``watch`` registers the collector that reads a controller at scrape time; serve
    ``registry`` (``prometheus_client.make_asgi_app(metrics.registry)`` or
    ``start_http_server(port, registry=metrics.registry)``).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.collector: ControllerCollector | None = None

    def watch(
        self,
        controller: Controller,
        *,
        clock: Callable[[], float] = time.time,
        policy_load_errors: Callable[[], int] | None = None,
        notifications: Callable[[], Mapping[str, int]] | None = None,
        leader: Callable[[], bool] | None = None,
        aggregates_deleted: Callable[[], int] | None = None,
    ) -> ControllerCollector:
        """Export ``controller``'s figures. ``policy_load_errors`` returns the number of
        bad policy loads so far (``PolicyFiles.load_errors``); ``notifications`` the
        notifier's counts by outcome (``WebhookNotifier.counts``); ``aggregates_deleted``
        the proxy-count ConfigMaps deleted so far (``AggregatesCleanup.deleted``)."""
        if self.collector is not None:
            raise RuntimeError("this registry already exports a controller")
        self.collector = ControllerCollector(
            controller,
            clock=clock,
            policy_load_errors=policy_load_errors,
            notifications=notifications,
            leader=leader,
            aggregates_deleted=aggregates_deleted,
        )
        self.registry.register(self.collector)
        return self.collector


def _unscored(view: Mapping[str, object]) -> int:
    """What a rung's view counts as unscored: a count, or a count with example ids."""
    unscored = view.get("unscored")
    if isinstance(unscored, Mapping):
        unscored = unscored.get("count")
    return unscored if isinstance(unscored, int) else 0
