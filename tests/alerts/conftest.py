"""Fixtures for the alert rules: where the rule file, its promtool tests and the runbooks
are, the rules parsed, the Prometheus binaries (skipped when missing, except in CI), and
what a live controller and proxy export."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from coalmine.shared.retry import status_class
from controller.metrics import ControllerMetrics
from policies.domain import Arm
from proxy.metrics import ProxyMetrics, SpanCounts
from proxy.outcome import Failure, RequestOutcome, Usage
from proxy.settings import ProxySettings
from proxy.workers import Worker, WorkerMetrics, WorkerPool, WorkerSpec
from tests.controller.release_rig import RELEASE, make_rig
from tests.controller.test_judged_on_proxy_counts import _rig as proxy_counts_rig
from tests.controller.test_ladder_loop import SHADOW, ladder_rig
from tests.proxy.proxy_support import closed_port_url

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "charts" / "coalmine" / "files" / "alerts.yaml"
ALERTS_TEST = Path(__file__).resolve().parent / "alerts_test.yaml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"


def binary(name: str) -> str:
    """Path of a Prometheus binary; skip without it, but fail under ``CI=true``."""
    found = shutil.which(name) or next(
        (str(path) for path in (Path("/usr/bin") / name,) if path.exists()), None
    )
    if found is None:
        reason = f"{name} is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must install it")
        pytest.skip(reason)
    return found


@pytest.fixture(scope="session")
def promtool() -> str:
    return binary("promtool")


@pytest.fixture(scope="session")
def prometheus() -> str:
    return binary("prometheus")


@pytest.fixture(scope="session")
def rules() -> list[dict[str, Any]]:
    """Every alerting rule of alerts.yaml."""
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


@pytest.fixture(scope="session")
def rule_tests() -> list[dict[str, Any]]:
    """Every ``alert_rule_test`` entry of alerts_test.yaml."""
    document = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    return [case for test in document["tests"] for case in test.get("alert_rule_test", [])]


def _outcome(
    arm: Arm, status: int, failure: Failure | None = None, usage: Usage | None = None
) -> RequestOutcome:
    return RequestOutcome(
        release=RELEASE,
        arm=arm,
        method="POST",
        path="/v1/chat/completions",
        status=status,
        start_ns=0,
        end_ns=30_000_000,
        trace_id="0" * 32,
        span_id="0" * 16,
        parent_span_id=None,
        request_id="r1",
        prompt_label="production",
        failure=failure,
        usage=usage,
    )


class _Running:
    """A worker process that is running (for ``WorkerPool.alive``)."""

    def is_alive(self) -> bool:
        return True


def _supervisor(worker_exposition: str, tmp_path: Path) -> CollectorRegistry:
    """What ``coalmine proxy --workers 2`` serves: two workers, each last read as
    ``worker_exposition`` (their metrics port is closed now, so the last reading stays)."""
    settings = ProxySettings(spans=False)
    pool = WorkerPool(WorkerSpec(settings, (), (tmp_path,), {}, "warning"), 2)
    port = int(closed_port_url().rsplit(":", 1)[1])
    for index in range(2):
        worker = Worker(index, _Running(), None, pid=1000 + index, metrics_port=port)  # type: ignore[arg-type]
        worker.families = list(text_string_to_metric_families(worker_exposition))
        pool.workers.append(worker)
    registry = CollectorRegistry()
    registry.register(WorkerMetrics(pool))
    return registry


@pytest.fixture
def expositions(tmp_path: Path) -> Iterator[list[str]]:
    """What a live controller and proxy export, as /metrics texts.

    A real controller on the release rig runs a canary (polls, judgements), is answered
    429 once and rolls back; another judges a canary on two proxies' counts; a third
    stands at a shadow rung; a real proxy's metrics count answered, failed and mirrored
    requests and request spans, and a supervisor of two such workers merges them."""
    rig = make_rig(tmp_path)
    counted = proxy_counts_rig(tmp_path / "counted")
    (tmp_path / "shadowed").mkdir()
    shadowed = ladder_rig(tmp_path / "shadowed", SHADOW.replace("percent: 50", "percent: 1"))
    try:
        at_rung = ControllerMetrics()
        at_rung.watch(shadowed.controller, clock=shadowed.clock)
        shadowed.run(3)
        controller = ControllerMetrics()
        controller.watch(
            rig.controller,
            clock=rig.clock,
            policy_load_errors=lambda: 0,
            notifications=lambda: {"sent": 1},
        )
        rig.run(4)
        rig.traffic.request_counts[("observations", status_class(429))] = 1
        rig.controller.manual(RELEASE, "rollback", actor="sre", now=rig.now)
        proxy = ProxyMetrics()
        proxy.observe(_outcome(Arm.BASELINE, 200, usage=Usage(120, 30, 0.0021)))
        proxy.observe(_outcome(Arm.CANARY, 502, Failure.CONNECT))
        proxy.observe(_outcome(Arm.CANARY, 200, Failure.UPSTREAM))
        proxy.observe_shadow(_outcome(Arm.SHADOW, 200))
        proxy.observe_shadow(_outcome(Arm.SHADOW, 503))
        proxy.shadow_dropped(RELEASE, "dropped_full")
        proxy.routing(RELEASE, 10.0, 3)
        proxy.registry.register(SpanCounts(lambda: {"sent": 2.0, "queued": 1.0}))
        on_counts = ControllerMetrics()
        on_counts.watch(counted.controller, clock=lambda: counted.now)
        counted.run(3)
        registries = (controller.registry, on_counts.registry, at_rung.registry, proxy.registry)
        texts = [generate_latest(registry).decode() for registry in registries]
        yield [*texts, generate_latest(_supervisor(texts[-1], tmp_path)).decode()]
    finally:
        rig.close()
        shadowed.close()
        if counted.controller.counts is not None:
            counted.controller.counts.close()
        counted.world.close()
        counted.world.routing.close()
        counted.state.close()
