"""Cluster-mode speed: how soon every proxy applies a new routing table, what a state
write costs, and how soon a standby takes over from a dead leader.

    python -m bench.cluster_speed [--proxies 8] [--changes 100] [--out bench/out]

The fake Kubernetes API server (``python -m tests.fakes.kube_api``) runs in its own process,
as the real one would; every "pod" below has its own client and connection pool.

1. **Routing-table propagation.** One writer (``ConfigMapRoutingStore``, as the leader's
   controller) changes a release's weight ``--changes`` times, 50 to 150 ms apart;
   ``--proxies`` watching stores (as the proxies of as many pods) each see the change
   through their watch. Measured: from the return of the write to the moment each proxy's
   ``versions()`` shows it (a checker thread looks every 0.5 ms). Reference, in the same
   run: local mode, the SQLite routing store with the same number of readers each
   polling ``versions()`` every 0.25 s (the proxy's default ``routingPollInterval``).
   Goal: every proxy within 1 s.
2. **State writes.** One decision with its journalled weight action and the action's
   completion, as the loop writes them: ``ClusterState`` (two replaces of the release's
   ConfigMap) against ``ControllerState`` (two SQLite transactions), 200 decisions each.
3. **Takeover.** Two ``LeaseElector`` threads with the default timing (15 s lease, 10 s
   renew deadline, 2 s retry); the leader stops renewing (as if killed with SIGKILL:
   it does not give the Lease up). Measured: from its last renewal to the standby
   holding the Lease, against the lease duration.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from coalmine.shared.routing_tables.configmap import ConfigMapRoutingStore
from coalmine.shared.routing_tables.store import SqliteRoutingStore
from coalmine.shared.routing_tables.table import ArmRoute, RoutingTable
from controller.cluster.lease import LeaseElector
from controller.cluster.release_configmaps import ClusterState
from controller.lifecycle import ActionKind, ReleaseState
from controller.release_store import ControllerState
from policies.domain import Phase

NAMESPACE = "bench"
PREFIX = "bench"
GOAL_SECONDS = 1.0


class ApiServer:
    """The fake API server in a process of its own."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.kube_api", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        self.url = line.split()[-1]

    def client(self) -> Any:
        from kubernetes import client  # noqa: PLC0415

        configuration = client.Configuration()
        configuration.host = self.url
        return client.ApiClient(configuration)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def _table(weight: float) -> RoutingTable:
    return RoutingTable(
        release="support",
        version=0,
        canary_weight=weight,
        baseline=ArmRoute(upstream="http://127.0.0.1:8000"),
        canary=ArmRoute(upstream="http://127.0.0.1:8001"),
    )


def _propagation(
    write: Callable[[RoutingTable, int | None], RoutingTable],
    readers: Sequence[Callable[[], dict[str, int]]],
    changes: int,
    seed: int,
) -> list[float]:
    """Seconds from each write's return to each reader seeing its version."""
    rng = random.Random(seed)
    delays: list[float] = []
    version: int | None = None
    for change in range(changes):
        time.sleep(0.05 + 0.1 * rng.random())
        stored = write(_table(float(change % 100)), version)
        version = stored.version
        written = time.monotonic()
        waiting = set(range(len(readers)))
        deadline = written + 10.0
        while waiting and time.monotonic() < deadline:
            for index in list(waiting):
                if readers[index]().get("support") == version:
                    delays.append(time.monotonic() - written)
                    waiting.discard(index)
            time.sleep(0.0005)
        delays.extend([float("inf")] * len(waiting))
    return delays


class _Poller:
    """A local-mode proxy's view: ``versions()`` of the SQLite store every 0.25 s."""

    def __init__(self, path: Path, stop: threading.Event) -> None:
        self.store = SqliteRoutingStore(path, readonly=True)
        self.seen: dict[str, int] = {}
        self.thread = threading.Thread(target=self._run, args=(stop,), daemon=True)
        self.thread.start()

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.seen = self.store.versions()
            stop.wait(0.25)


def _view(poller: _Poller) -> Callable[[], dict[str, int]]:
    return lambda: poller.seen


def propagation(server: ApiServer, proxies: int, changes: int) -> dict[str, Any]:
    writer = ConfigMapRoutingStore(server.client(), NAMESPACE, PREFIX, ["support"])
    watchers = [
        ConfigMapRoutingStore(server.client(), NAMESPACE, PREFIX, ["support"], watch=True)
        for _ in range(proxies)
    ]
    for watcher in watchers:
        watcher.wait_synced(10.0)
    watched = _propagation(writer.write, [w.versions for w in watchers], changes, seed=1)
    for watcher in watchers:
        watcher.close()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "state.db"
        local = SqliteRoutingStore(path)
        local.write(_table(0.0), None)
        stop = threading.Event()
        pollers = [_Poller(path, stop) for _ in range(proxies)]
        first = local.read("support")
        assert first is not None
        version = first.version

        def write(table: RoutingTable, _expected: int | None) -> RoutingTable:
            nonlocal version
            stored = local.write(table, version)
            version = stored.version
            return stored

        views: list[Callable[[], dict[str, int]]] = [_view(poller) for poller in pollers]
        polled = _propagation(write, views, changes, seed=1)
        stop.set()
    return {"watch": _summary(watched), "sqlite_poll": _summary(polled)}


def state_writes(server: ApiServer, decisions: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        stores: dict[str, ControllerState] = {
            "configmap": ClusterState(
                Path(folder) / "cache.db", server.client(), NAMESPACE, PREFIX
            ),
            "sqlite": ControllerState(Path(folder) / "state.db"),
        }
        for name, store in stores.items():
            release = ReleaseState(name="support", phase=Phase.CANARY, step_starts=(0.0,))
            store.save_release(release)
            timings = []
            for index in range(decisions):
                started = time.perf_counter()
                store.decide(
                    release,
                    at=float(index),
                    decision="advance",
                    actor="controller",
                    reason="bench",
                    evidence={"metrics": [{"name": "errors", "estimate": 0.01}]},
                    actions=[(ActionKind.SET_WEIGHT, {"weight": 10.0})],
                )
                for action in store.pending_actions("support"):
                    store.finish_action(action, at=float(index))
                timings.append(time.perf_counter() - started)
            results[name] = _summary(timings)
            store.close()
    return results


def takeover(server: ApiServer) -> dict[str, Any]:
    leader = LeaseElector(server.client(), NAMESPACE, "bench-lease", "pod-a")
    standby = LeaseElector(server.client(), NAMESPACE, "bench-lease", "pod-b")
    assert leader.try_acquire_or_renew()
    stop = threading.Event()
    took: list[float] = []

    def stand_by() -> None:
        while not stop.is_set():
            if standby.try_acquire_or_renew():
                took.append(time.monotonic())
                return
            stop.wait(standby.retry_period)

    thread = threading.Thread(target=stand_by, daemon=True)
    thread.start()
    for _ in range(3):
        time.sleep(leader.retry_period)
        leader.try_acquire_or_renew()
    last_renewal = time.monotonic()
    thread.join(timeout=60)
    stop.set()
    seconds = took[0] - last_renewal if took else float("inf")
    return {
        "seconds": seconds,
        "lease_duration": leader.lease_duration,
        "retry_period": leader.retry_period,
    }


def _summary(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max": ordered[-1],
    }


def _ms(value: float) -> str:
    return "never" if value == float("inf") else f"{value * 1000:.1f} ms"


def report(results: dict[str, Any], command: str) -> str:
    watch, poll = results["propagation"]["watch"], results["propagation"]["sqlite_poll"]
    writes = results["state_writes"]
    lease = results["takeover"]
    met = "yes" if watch["max"] <= GOAL_SECONDS else "no"
    lines = [
        "# Cluster mode",
        "",
        f"Command: `{command}`; {results['machine']}.",
        "",
        f"Routing-table propagation, {results['proxies']} proxies, "
        f"{results['changes']} changes (from the write's return to each proxy seeing it):",
        "",
        "| store | p50 | p99 | max | ratio p50 to reference |",
        "| --- | --- | --- | --- | --- |",
        f"| ConfigMap, watched | {_ms(watch['p50'])} | {_ms(watch['p99'])} | "
        f"{_ms(watch['max'])} | {watch['p50'] / poll['p50']:.3f} |",
        f"| reference: SQLite, polled every 0.25 s | {_ms(poll['p50'])} | {_ms(poll['p99'])} | "
        f"{_ms(poll['max'])} | 1 |",
        "",
        f"Goal: every proxy applies a change within 1 s: {met} (max {_ms(watch['max'])}).",
        "",
        "State writes, one decision with its weight action journalled and finished:",
        "",
        "| store | p50 | p99 | ratio p50 to reference |",
        "| --- | --- | --- | --- |",
        f"| ConfigMap (fake API server, loopback) | {_ms(writes['configmap']['p50'])} | "
        f"{_ms(writes['configmap']['p99'])} | "
        f"{writes['configmap']['p50'] / writes['sqlite']['p50']:.1f} |",
        f"| reference: SQLite (WAL) | {_ms(writes['sqlite']['p50'])} | "
        f"{_ms(writes['sqlite']['p99'])} | 1 |",
        "",
        f"Takeover after the leader stopped renewing: {lease['seconds']:.2f} s with a "
        f"{lease['lease_duration']:g} s lease and a {lease['retry_period']:g} s retry "
        f"period ({lease['seconds'] / lease['lease_duration']:.2f} of the lease duration).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--proxies", type=int, default=8)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--decisions", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    args = parser.parse_args(argv)
    command = "python -m bench.cluster_speed " + " ".join(argv or sys.argv[1:])
    server = ApiServer()
    try:
        results: dict[str, Any] = {
            "proxies": args.proxies,
            "changes": args.changes,
            "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
            "propagation": propagation(server, args.proxies, args.changes),
            "state_writes": state_writes(server, args.decisions),
            "takeover": takeover(server),
        }
    finally:
        server.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    text = report(results, command.strip())
    (args.out / "cluster_speed.md").write_text(text, encoding="utf-8")
    (args.out / "cluster_speed.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
