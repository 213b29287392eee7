"""The proxy's Prometheus metrics, in a registry of their own, served on their own port.

Labels stay of low cardinality: release (a handful per proxy), arm (three), status class
(five), failure and outcome kinds (a few). Children are cached so that the request path
pays for no label lookup.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import lru_cache

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from policies.domain import Arm
from proxy.outcome import Failure, RequestOutcome

LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
"""Seconds; LLM calls run from milliseconds (cached) to minutes (long generations)."""


class ShadowOutcome:
    SENT = "sent"
    FAILED = "failed"
    DROPPED_FULL = "dropped_full"
    DROPPED_TOO_LARGE = "dropped_too_large"


class PolicySetOutcome:
    APPLIED = "applied"
    REFUSED = "refused"
    FAILED = "failed"
    ALL = (APPLIED, REFUSED, FAILED)


class SpanCounts(Collector):
    """Reads the span reporter's counters at scrape time."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self.read = read

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        counts = self.read()
        spans = CounterMetricFamily(
            "coalmine_proxy_spans",
            "Request spans for Langfuse by outcome: sent, dropped (queue full), failed.",
            labels=["outcome"],
        )
        for outcome in ("sent", "dropped_full", "failed"):
            spans.add_metric([outcome], counts.get(outcome, 0.0))
        yield spans
        queued = GaugeMetricFamily(
            "coalmine_proxy_span_queue_spans", "Request spans waiting to be sent to Langfuse."
        )
        queued.add_metric([], counts.get("queued", 0.0))
        yield queued


class ProxyMetrics:
    """Every metric the proxy exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "coalmine_proxy_requests",
            "Requests answered, by release, arm and status class (2xx...5xx).",
            ["release", "arm", "code_class"],
            registry=r,
        )
        self.duration = Histogram(
            "coalmine_proxy_request_duration_seconds",
            "Time from the request's arrival to the end of its response, by release and arm.",
            ["release", "arm"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "coalmine_proxy_upstream_errors",
            "Upstream failures (connect, timeout, broken response), by release, arm and kind.",
            ["release", "arm", "kind"],
            registry=r,
        )
        self.client_gone = Counter(
            "coalmine_proxy_client_disconnects",
            "Requests whose client went away before the response was complete.",
            ["release", "arm"],
            registry=r,
        )
        self.refused = Counter(
            "coalmine_proxy_refused_requests",
            "Requests refused by the proxy itself, by reason.",
            ["reason"],
            registry=r,
        )
        self.shadow = Counter(
            "coalmine_proxy_shadow_requests",
            "Mirrored copies by outcome: sent, failed, dropped_full, dropped_too_large.",
            ["release", "outcome"],
            registry=r,
        )
        self.shadow_duration = Histogram(
            "coalmine_proxy_shadow_duration_seconds",
            "Time the staging upstream took to answer a mirrored copy.",
            ["release"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "coalmine_proxy_in_flight_requests",
            "Requests being served now.",
            registry=r,
        )
        self.shadow_in_flight = Gauge(
            "coalmine_proxy_shadow_in_flight_requests",
            "Mirrored copies in flight now.",
            registry=r,
        )
        self.weight = Gauge(
            "coalmine_proxy_canary_weight_percent",
            "Canary weight the proxy applies, by release.",
            ["release"],
            registry=r,
        )
        self.table_version = Gauge(
            "coalmine_proxy_routing_table_version",
            "Version of the routing table the proxy applies, by release.",
            ["release"],
            registry=r,
        )
        self.table_errors = Counter(
            "coalmine_proxy_routing_table_errors",
            "Routing tables that could not be read or were refused, by release.",
            ["release"],
            registry=r,
        )
        self.routed_releases = Gauge(
            "coalmine_proxy_routed_releases",
            "Releases the proxy routes now.",
            registry=r,
        )
        self.policy_sets = Counter(
            "coalmine_proxy_policy_sets",
            "Changed sets of policies taken in while running, by outcome: applied (all of "
            "it), refused (applied without the policies that clash with ones in force), "
            "failed (the set could not be read; the releases routed stay as they were).",
            ["outcome"],
            registry=r,
        )
        for outcome in PolicySetOutcome.ALL:
            self.policy_sets.labels(outcome)
        self.client_timeouts = Counter(
            "coalmine_proxy_client_timeouts",
            "Client connections cut for time, by phase: head (a request head not whole "
            "within the header timeout, answered 408), body (a request body that stalled "
            "for the body timeout), idle (a new connection that sent no request within the "
            "idle timeout).",
            ["phase"],
            registry=r,
        )
        for phase in ("head", "body", "idle"):
            self.client_timeouts.labels(phase)
        self._request_children = lru_cache(maxsize=4096)(self._children)

    def _children(self, release: str, arm: Arm, code_class: str) -> tuple[Counter, Histogram]:
        return (
            self.requests.labels(release, arm.value, code_class),
            self.duration.labels(release, arm.value),
        )

    def observe(self, outcome: RequestOutcome) -> None:
        """Count one primary request."""
        code_class = f"{outcome.status // 100}xx" if outcome.status else "none"
        counter, histogram = self._request_children(outcome.release, outcome.arm, code_class)
        counter.inc()
        histogram.observe(outcome.duration_seconds)
        failure = outcome.failure
        if failure is Failure.CLIENT_GONE:
            self.client_gone.labels(outcome.release, outcome.arm.value).inc()
        elif failure is not None and failure is not Failure.TOO_LARGE:
            self.upstream_errors.labels(outcome.release, outcome.arm.value, failure.value).inc()

    def observe_shadow(self, outcome: RequestOutcome) -> None:
        """Count one mirrored copy that was sent (answered or failed)."""
        failed = outcome.failure is not None or outcome.status >= 500 or outcome.status == 0
        self.shadow.labels(
            outcome.release, ShadowOutcome.FAILED if failed else ShadowOutcome.SENT
        ).inc()
        self.shadow_duration.labels(outcome.release).observe(outcome.duration_seconds)

    def shadow_dropped(self, release: str, outcome: str) -> None:
        self.shadow.labels(release, outcome).inc()

    def routing(self, release: str, weight: float, version: int) -> None:
        self.weight.labels(release).set(weight)
        self.table_version.labels(release).set(version)

    def unrouted(self, release: str) -> None:
        """A release no longer routed: its weight and table version are not exported."""
        for gauge in (self.weight, self.table_version):
            with contextlib.suppress(KeyError):  # never routed by this proxy
                gauge.remove(release)
