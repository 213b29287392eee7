"""The controller's metrics for a release judged on the proxies' counts: how many proxies
counted its requests at the last look, and whether its canary was found losing traces,
read at scrape time from a controller driven as in ``test_judged_on_proxy_counts``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from controller.metrics import ControllerMetrics
from policies.domain import Phase
from tests.controller.release_rig import RELEASE
from tests.controller.test_judged_on_proxy_counts import Rig, _rig

PROXIES = "coalmine_release_proxies_counting"
LOSS = "coalmine_trace_loss_detected"


@contextmanager
def watched(tmp_path: Path, **world: Any) -> Iterator[tuple[Rig, CollectorRegistry]]:
    rig = _rig(tmp_path, **world)
    metrics = ControllerMetrics()
    metrics.watch(rig.controller, clock=lambda: rig.now)
    try:
        yield rig, metrics.registry
    finally:
        if rig.controller.counts is not None:
            rig.controller.counts.close()
        rig.world.close()
        rig.world.routing.close()
        rig.state.close()


def value(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(name, {"release": RELEASE})


def test_a_healthy_canary_counted_by_two_proxies(tmp_path: Path) -> None:
    with watched(tmp_path) as (rig, registry):
        assert value(registry, PROXIES) is None, "no look yet"
        rig.run(10)
        assert rig.phase() is Phase.CANARY
        assert value(registry, PROXIES) == 2.0
        assert value(registry, LOSS) == 0.0


def test_proxies_that_count_nothing_show_as_none_counting(tmp_path: Path) -> None:
    """Proxies not in front of the traffic, or not counting: the release waits on "no
    requests counted" and nothing else says why."""
    with watched(tmp_path, counting=False) as (rig, registry):
        rig.run(15)
        release = rig.state.release(RELEASE)
        assert release is not None
        assert (release.phase, release.step) == (Phase.CANARY, 0)
        assert value(registry, PROXIES) == 0.0
        assert value(registry, LOSS) == 0.0


def test_a_canary_losing_its_traces_is_flagged(tmp_path: Path) -> None:
    with watched(tmp_path, canary_lost=0.2) as (rig, registry):
        rig.run(120, until=Phase.PAUSED)
        assert rig.phase() is Phase.PAUSED
        assert value(registry, LOSS) == 1.0
        assert value(registry, PROXIES) == 2.0
        assert value(registry, "coalmine_sample_ratio_mismatch") == 0.0


def test_a_release_judged_on_langfuse_traces_exports_neither(
    tmp_path: Path,
) -> None:
    with watched(tmp_path, from_proxy=False) as (rig, registry):
        rig.run(10)
        assert rig.phase() is Phase.CANARY
        assert value(registry, "coalmine_sample_ratio_mismatch") == 0.0
        assert value(registry, PROXIES) is None
        assert value(registry, LOSS) is None
