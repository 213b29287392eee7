"""Leader election on a Lease: one leader at a time, takeover only after the Lease
expires by the standby's own clock, fencing past the renew deadline, 409 races."""

from __future__ import annotations

import threading
from typing import Any

from kubernetes import client

from coalmine.shared.kube.client import ClusterSettings
from controller.cluster.lease import LeaseElector, LeaseTiming
from controller.errors import NotLeaderError
from tests.cluster.cluster_support import NAMESPACE, Clock, wait_until, write_kubeconfig

LEASE = "coalmine-controller"


def elector(api: Any, clock: Clock, identity: str, **timing: float) -> LeaseElector:
    return LeaseElector(
        api,
        NAMESPACE,
        LEASE,
        identity,
        timing=LeaseTiming(
            lease_duration=timing.get("lease_duration", 15.0),
            renew_deadline=timing.get("renew_deadline", 10.0),
            retry_period=timing.get("retry_period", 2.0),
        ),
        clock=clock,
        wall=clock.wall,
    )


def holder(api: Any) -> tuple[str | None, int]:
    lease = client.CoordinationV1Api(api).read_namespaced_lease(LEASE, NAMESPACE)
    return lease.spec.holder_identity, int(lease.spec.lease_transitions or 0)


def test_the_first_replica_creates_the_lease_and_the_second_stands_by(
    api: Any, clock: Clock
) -> None:
    first, second = elector(api, clock, "pod-a"), elector(api, clock, "pod-b")
    assert first.try_acquire_or_renew()
    assert not second.try_acquire_or_renew()
    assert first.is_leader() and not second.is_leader()
    assert second.leader == "pod-a"
    assert holder(api) == ("pod-a", 0)


def test_a_standby_waits_out_the_lease_duration_by_its_own_clock(api: Any, clock: Clock) -> None:
    first, second = elector(api, clock, "pod-a"), elector(api, clock, "pod-b")
    first.try_acquire_or_renew()
    second.try_acquire_or_renew()  # first sight of pod-a's record
    for _ in range(10):  # pod-a renews every 2 s: pod-b never takes over
        clock.advance(2)
        assert first.try_acquire_or_renew()
        assert not second.try_acquire_or_renew()
    # pod-a dies; its record stays as it last wrote it
    clock.advance(14.9)
    assert not second.try_acquire_or_renew(), "taken before the lease duration passed"
    clock.advance(0.2)
    assert second.try_acquire_or_renew()
    assert holder(api) == ("pod-b", 1)
    assert second.is_leader()


def test_a_leader_that_cannot_renew_stops_acting_at_the_renew_deadline(
    api: Any, clock: Clock, kube: Any
) -> None:
    first = elector(api, clock, "pod-a")
    assert first.try_acquire_or_renew()
    kube.set_unavailable(True)
    clock.advance(9.0)
    assert first.try_acquire_or_renew(), "still within the renew deadline"
    first.fence()
    clock.advance(1.5)
    assert not first.try_acquire_or_renew()
    try:
        first.fence()
    except NotLeaderError as error:
        assert "pod-a does not hold lease" in str(error)
    else:
        raise AssertionError("fence let a leader past its renew deadline act")
    kube.set_unavailable(False)
    assert first.try_acquire_or_renew(), "its own record: renewed again"


def test_the_renew_deadline_ends_leadership_before_anyone_may_take_over(
    api: Any, clock: Clock
) -> None:
    first, second = elector(api, clock, "pod-a"), elector(api, clock, "pod-b")
    first.try_acquire_or_renew()
    second.try_acquire_or_renew()
    for _ in range(16):  # step through the gap second by second
        clock.advance(1.0)
        took = second.try_acquire_or_renew()
        assert not (took and first.is_leader()), "two replicas believed they led"


def test_of_many_replicas_racing_for_a_free_lease_exactly_one_wins(api: Any, clock: Clock) -> None:
    electors = [elector(api, clock, f"pod-{index}") for index in range(8)]
    barrier = threading.Barrier(len(electors))
    results: dict[str, bool] = {}

    def race(candidate: LeaseElector) -> None:
        barrier.wait()
        results[candidate.identity] = candidate.try_acquire_or_renew()

    threads = [threading.Thread(target=race, args=(candidate,)) for candidate in electors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [name for name, won in results.items() if won]
    assert len(winners) == 1
    assert holder(api)[0] == winners[0]
    assert sum(candidate.is_leader() for candidate in electors) == 1


def test_a_released_lease_is_taken_at_once(api: Any, clock: Clock) -> None:
    first, second = elector(api, clock, "pod-a"), elector(api, clock, "pod-b")
    first.try_acquire_or_renew()
    second.try_acquire_or_renew()
    first.release()
    assert not first.is_leader()
    assert second.try_acquire_or_renew(), "a released lease has no holder to wait for"
    assert holder(api) == ("pod-b", 1)


def test_run_reports_when_leading_starts_and_ends(api: Any) -> None:
    real = LeaseElector(api, NAMESPACE, LEASE, "pod-a", timing=LeaseTiming(retry_period=0.05))
    changes: list[bool] = []
    stop = threading.Event()
    thread = threading.Thread(target=real.run, args=(stop, changes.append))
    thread.start()
    try:
        wait_until(lambda: changes == [True], what="leading to start")
    finally:
        stop.set()
        thread.join(timeout=5)
    assert changes == [True, False]
    assert holder(api)[0] is None, "the lease is given up on the way out"


def test_without_a_namespace_setting_the_kubeconfig_context_names_it(tmp_path: Any) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:1", None, "team-a")
    assert ClusterSettings(kubeconfig=kubeconfig).resolved_namespace() == "team-a"
    explicit = ClusterSettings(kubeconfig=kubeconfig, namespace="team-b")
    assert explicit.resolved_namespace() == "team-b"
