"""The proxy's request counts and durations, tallied in plain dicts, read exactly as
prometheus_client's own Counter and Histogram would export the same observations."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from proxy.metrics import LATENCY_BUCKETS, RequestTally


def _exported(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return sorted(line for line in text.splitlines() if not line.startswith("#"))


def test_the_tally_exports_what_prometheus_client_would() -> None:
    rng = random.Random(7)
    tally_registry, reference_registry = CollectorRegistry(), CollectorRegistry()
    tally = RequestTally(LATENCY_BUCKETS)
    tally_registry.register(tally)
    requests = Counter(
        "coalmine_proxy_requests",
        "",
        ["release", "arm", "code_class"],
        registry=reference_registry,
    )
    durations = Histogram(
        "coalmine_proxy_request_duration_seconds",
        "",
        ["release", "arm"],
        buckets=LATENCY_BUCKETS,
        registry=reference_registry,
    )
    edges = [*LATENCY_BUCKETS, 0.0, 1e-9, 400.0]
    for _ in range(5000):
        release = rng.choice(["support", "billing"])
        arm = rng.choice(["baseline", "canary"])
        code_class = rng.choice(["2xx", "4xx", "5xx", "none"])
        seconds = rng.choice(edges) if rng.random() < 0.2 else rng.expovariate(2.0)
        tally.add(release, arm, code_class, seconds)
        requests.labels(release, arm, code_class).inc()
        durations.labels(release, arm).observe(seconds)
    exported, reference = _exported(tally_registry), _exported(reference_registry)
    created = [line for line in reference if "_created" in line]
    assert exported == [line for line in reference if line not in created]
    assert any('le="0.005"' in line for line in exported)
