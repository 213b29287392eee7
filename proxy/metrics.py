"""The proxy's Prometheus metrics, in a registry of their own, served on their own port.

Labels stay of low cardinality: release (a handful per proxy), arm (three), status class
(five), failure and outcome kinds (a few). Children are cached so that the request path
pays for no label lookup.
"""

from __future__ import annotations

import contextlib
import math
from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from coalmine.shared.build_info import build_labels
from policies.domain import Arm
from proxy.outcome import Failure, RequestOutcome, Usage

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


def _le(bound: float) -> str:
    """A bucket's ``le`` label as Prometheus's clients write it."""
    return "+Inf" if bound == math.inf else repr(float(bound))


_CODE_CLASSES = {n: f"{n}xx" for n in range(1, 6)}
# read once: an enum member's value, or a member read off its class, costs a call
_ARM_VALUES: dict[str, str] = {arm: arm.value for arm in Arm}
_CLIENT_GONE, _TOO_LARGE = Failure.CLIENT_GONE, Failure.TOO_LARGE
"""Status class labels by the status's first digit; none for no status (0)."""


class RequestTally(Collector):
    """Requests answered (by release, arm and status class) and their durations (by
    release and arm), counted in plain dicts and exported at scrape time as
    ``coalmine_proxy_requests_total`` and the histogram
    ``coalmine_proxy_request_duration_seconds``. The request path pays a dict lookup and
    a bisection, no lock: it runs on the event loop alone, and a scrape (another thread)
    copies the dicts in one step before reading them."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = buckets
        self.counts: dict[tuple[str, str, str], int] = {}
        self._les = [_le(bound) for bound in (*buckets, math.inf)]
        self.durations: dict[tuple[str, str], list[float]] = {}
        """Per (release, arm): the count in each bucket (one past the last bound for
        +Inf), then the sum of the durations."""

    def add(self, release: str, arm: str, code_class: str, seconds: float) -> None:
        key = (release, arm, code_class)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        cells = self.durations.get((release, arm))
        if cells is None:
            cells = self.durations[release, arm] = [0.0] * (len(self.bounds) + 2)
        cells[bisect_left(self.bounds, seconds)] += 1
        cells[-1] += seconds

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily(
            "coalmine_proxy_requests",
            "Requests answered, by release, arm and status class (2xx...5xx).",
            labels=["release", "arm", "code_class"],
        )
        for labels, count in list(self.counts.items()):
            requests.add_metric(list(labels), count)
        yield requests
        durations = HistogramMetricFamily(
            "coalmine_proxy_request_duration_seconds",
            "Time from the request's arrival to the end of its response, by release and arm.",
            labels=["release", "arm"],
        )
        for pair, live in list(self.durations.items()):
            cells = list(live)
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, in_bucket in zip(self._les, cells[:-1], strict=True):
                cumulative += in_bucket
                buckets.append((bound, cumulative))
            durations.add_metric(list(pair), buckets, cells[-1])
        yield durations


class UsageTally(Collector):
    """What responses said they used (their OpenAI-style ``usage``, ``proxy.usage``), by
    release and arm, over 100% of the traffic: exported at scrape time as
    ``coalmine_proxy_usage_responses_total`` (``cost`` ``reported`` or ``none``: whether
    the response also said what it cost), ``coalmine_proxy_tokens_total`` (``type``
    ``input`` or ``output``) and ``coalmine_proxy_cost_usd_total`` (the cost the
    responses reported; no series until one did, so that an app whose answers report no
    cost shows no cost rather than a cost of 0). Counted as ``RequestTally`` counts: a
    plain dict on the event loop, copied in one step by a scrape."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, str], list[float]] = {}
        """Per (release, arm): responses with a usage, input tokens, output tokens,
        responses with a cost, cost in US dollars."""

    def add(self, release: str, arm: str, usage: Usage) -> None:
        totals = self.totals.get((release, arm))
        if totals is None:
            totals = self.totals[release, arm] = [0, 0, 0, 0, 0.0]
        totals[0] += 1
        totals[1] += usage.prompt_tokens
        totals[2] += usage.completion_tokens
        if usage.cost_usd is not None:
            totals[3] += 1
            totals[4] += usage.cost_usd

    def collect(self) -> Iterator[CounterMetricFamily]:
        responses = CounterMetricFamily(
            "coalmine_proxy_usage_responses",
            "Responses that reported their usage (tokens), by release, arm and whether "
            "they reported their cost too (cost: reported or none).",
            labels=["release", "arm", "cost"],
        )
        tokens = CounterMetricFamily(
            "coalmine_proxy_tokens",
            "Tokens the responses reported, by release, arm and type (input: prompt, "
            "output: completion).",
            labels=["release", "arm", "type"],
        )
        cost = CounterMetricFamily(
            "coalmine_proxy_cost_usd",
            "Cost in US dollars the responses reported (usage.cost or "
            "x-litellm-response-cost), by release and arm.",
            labels=["release", "arm"],
        )
        for (release, arm), live in list(self.totals.items()):
            totals = list(live)
            responses.add_metric([release, arm, "reported"], totals[3])
            responses.add_metric([release, arm, "none"], totals[0] - totals[3])
            tokens.add_metric([release, arm, "input"], totals[1])
            tokens.add_metric([release, arm, "output"], totals[2])
            if totals[3]:
                cost.add_metric([release, arm], totals[4])
        yield responses
        yield tokens
        yield cost


class ProxyMetrics:
    """Every metric the proxy exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        build = build_labels()
        Gauge(
            "coalmine_build_info",
            "Always 1: the coalmine version and the Python version of this proxy.",
            list(build),
            registry=r,
        ).labels(**build).set(1)
        self.answered = RequestTally(LATENCY_BUCKETS)
        r.register(self.answered)
        self.used = UsageTally()
        r.register(self.used)
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
        self.usage_unreadable = Counter(
            "coalmine_proxy_usage_unreadable",
            "Responses whose usage object (tokens, cost) could not be read: not JSON, not "
            "an object, or token counts that are not integers from 0, by release and arm.",
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
            "coalmine_proxy_canary_weight_ratio",
            "Canary weight the proxy applies, by release, from 0 to 1 (a weight of 10 in "
            "the routing table is 0.1).",
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
        self.aggregate_writes = Counter(
            "coalmine_proxy_aggregate_writes",
            "Writes of the proxy's per-minute request counts to the state store, by "
            "outcome: ok, failed (the counts are kept and written at the next flush).",
            ["outcome"],
            registry=r,
        )
        for outcome in ("ok", "failed"):
            self.aggregate_writes.labels(outcome)
        self.aggregate_cells_dropped = Counter(
            "coalmine_proxy_aggregate_cells_dropped",
            "Per-minute request counts (one release, arm and minute each) never written: "
            "past the retention while the store failed, or over a ConfigMap's size.",
            registry=r,
        )

    def observe(self, outcome: RequestOutcome) -> None:
        """Count one primary request."""
        arm = _ARM_VALUES[outcome.arm]
        release = outcome.release
        # RequestTally.add, in line
        tally = self.answered
        key = (release, arm, _CODE_CLASSES.get(outcome.status // 100, "none"))
        counts = tally.counts
        counts[key] = counts.get(key, 0) + 1
        cells = tally.durations.get((release, arm))
        if cells is None:
            cells = tally.durations[release, arm] = [0.0] * (len(tally.bounds) + 2)
        seconds = (outcome.end_ns - outcome.start_ns) / 1e9
        cells[bisect_left(tally.bounds, seconds)] += 1
        cells[-1] += seconds
        usage = outcome.usage
        if usage is not None:
            self.used.add(release, arm, usage)
        failure = outcome.failure
        if failure is None:
            return
        if failure is _CLIENT_GONE:
            self.client_gone.labels(outcome.release, arm).inc()
        elif failure is not _TOO_LARGE:
            self.upstream_errors.labels(outcome.release, arm, failure.value).inc()

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
        """The routing table applied to ``release``: its weight in percent, its version."""
        self.weight.labels(release).set(weight / 100.0)
        self.table_version.labels(release).set(version)

    def unrouted(self, release: str) -> None:
        """A release no longer routed: its weight and table version are not exported."""
        for gauge in (self.weight, self.table_version):
            with contextlib.suppress(KeyError):  # never routed by this proxy
                gauge.remove(release)
