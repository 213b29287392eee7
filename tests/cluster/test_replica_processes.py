"""Two real ``coalmine run`` processes (proxy and controller, as in the chart's pods)
in cluster mode, one fake API server and
one Langfuse emulator: one leads and starts the release, the other stands by (its
readiness says so, its manual actions are refused with the leader's name); the leader
killed with SIGKILL, the standby takes the Lease and carries the release on without
starting it twice."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client

from coalmine.emulator.settings import EmulatorSettings
from controller.cluster.release_configmaps import ClusterState
from tests.cluster.cluster_support import NAMESPACE, wait_until, write_kubeconfig
from tests.emulator.emulator_support import LiveEmulator, emulator_with_prompt

pytestmark = pytest.mark.slow

TOKEN = "admin-token-for-the-replicas-0123"  # 33 characters: strong enough
PREFIX = "shop-app"
LEASE = "shop-app-controller"
COALMINE = Path(sys.executable).with_name("coalmine")
POLICY = """\
apiVersion: coalmine/v1
kind: Release
name: support
target:
  prompt: {name: support-agent, stableLabel: production, canaryLabel: canary}
  upstreams: {stable: "http://127.0.0.1:8000", canary: "http://127.0.0.1:8001"}
steps:
  - {weight: 10, minDuration: 30m}
  - {weight: 50, minDuration: 30m}
analysis:
  interval: 1s
  metrics:
    - {name: errors, source: error_rate, tolerance: 0.03, critical: true}
kubernetes:
  eventTarget: {kind: Deployment, name: shop-app}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def emulator() -> Iterator[tuple[LiveEmulator, EmulatorSettings]]:
    labels = {1: ["production"], 2: ["canary"]}
    with emulator_with_prompt("support-agent", labels, versions=2) as running:
        yield running


class Replica:
    """One controller process, as one pod of the Deployment."""

    def __init__(self, name: str, tmp_path: Path, env: dict[str, str]) -> None:
        self.name = name
        self.admin = f"http://127.0.0.1:{free_port()}"
        self.metrics = f"http://127.0.0.1:{free_port()}"
        self.log = (tmp_path / f"{name}.log").open("wb")
        self.process = subprocess.Popen(
            [
                str(COALMINE),
                "run",
                "--listen",
                f"127.0.0.1:{free_port()}",
                "--policy",
                str(tmp_path / "policies"),
                "--state",
                str(tmp_path / f"{name}-cache.db"),
                "--admin-listen",
                self.admin.removeprefix("http://"),
                "--metrics-listen",
                self.metrics.removeprefix("http://"),
            ],
            env={**env, "COALMINE_POD_NAME": name},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str, base: str | None = None) -> httpx.Response | None:
        try:
            return httpx.get(
                (base or self.admin) + path,
                headers={"authorization": f"Bearer {TOKEN}"},
                timeout=5,
            )
        except httpx.HTTPError:
            return None

    def metric(self, series: str) -> float | None:
        answer = self.get("/metrics", self.metrics)
        if answer is None:
            return None
        for line in answer.text.splitlines():
            if line.startswith(series + " "):
                return float(line.split()[1])
        return None

    def leader_gauge(self) -> float | None:
        return self.metric("coalmine_controller_leader")

    def proxy_weight(self) -> float | None:
        return self.metric('coalmine_proxy_canary_weight_ratio{release="support"}')

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def holder(api: Any) -> str | None:
    try:
        lease = client.CoordinationV1Api(api).read_namespaced_lease(LEASE, NAMESPACE)
    except client.exceptions.ApiException:
        return None
    return lease.spec.holder_identity


def test_a_standby_takes_over_from_a_killed_leader_and_carries_the_release_on(
    kube: Any, api: Any, tmp_path: Path, emulator: tuple[LiveEmulator, EmulatorSettings]
) -> None:
    live, settings = emulator
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "support.yaml").write_text(POLICY, encoding="utf-8")
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube.url, kube.token, NAMESPACE)
    env = {
        **os.environ,
        "COALMINE_CLUSTER": "true",
        "COALMINE_KUBECONFIG": str(kubeconfig),
        "COALMINE_NAMESPACE": NAMESPACE,
        "COALMINE_CONFIGMAP_PREFIX": PREFIX,
        "COALMINE_LEASE_NAME": LEASE,
        "COALMINE_LEASE_DURATION_SECONDS": "3",
        "COALMINE_RENEW_DEADLINE_SECONDS": "2",
        "COALMINE_RETRY_PERIOD_SECONDS": "0.5",
        "COALMINE_TICK_SECONDS": "1",
        "COALMINE_ADMIN_TOKEN": TOKEN,
        "LANGFUSE_BASE_URL": live.base_url,
        "LANGFUSE_PUBLIC_KEY": settings.public_key,
        "LANGFUSE_SECRET_KEY": settings.secret_key,
    }
    replicas = [Replica("pod-a", tmp_path, env), Replica("pod-b", tmp_path, env)]
    try:
        for member in replicas:
            wait_until(
                lambda member=member: member.get("/healthz") is not None,
                within=30,
                what=f"{member.name}'s admin API",
            )
        wait_until(lambda: holder(api) in ("pod-a", "pod-b"), within=30, what="a leader")
        leader = next(r for r in replicas if r.name == holder(api))
        standby = next(r for r in replicas if r is not leader)
        reader = ClusterState(tmp_path / "reader.db", api, NAMESPACE, PREFIX)

        def decisions() -> list[str]:
            reader.refresh()
            return [record.decision for record in reader.decisions("support")]

        wait_until(lambda: decisions() == ["start"], within=30, what="the release to start")
        wait_until(lambda: standby.leader_gauge() == 0.0, within=10, what="standby metrics")
        assert leader.leader_gauge() == 1.0
        ready = standby.get("/readyz")
        assert ready is not None and ready.json() == {"status": "standby"}
        refused = httpx.post(
            f"{standby.admin}/releases/support/pause",
            headers={"authorization": f"Bearer {TOKEN}"},
            timeout=5,
        )
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "not_leader"
        assert leader.name in refused.json()["error"]["message"]
        status = standby.get("/releases/support")
        assert status is not None and status.json()["phase"] == "canary", "standbys serve status"
        for member in replicas:  # every pod's proxy follows the leader's routing table
            wait_until(
                lambda member=member: member.proxy_weight() == 0.1,
                within=10,
                what=f"{member.name}'s proxy at weight 10",
            )

        leader.process.send_signal(signal.SIGKILL)
        leader.process.wait()
        killed_at = time.monotonic()
        wait_until(lambda: holder(api) == standby.name, within=30, what="the takeover")
        takeover = time.monotonic() - killed_at
        wait_until(lambda: standby.leader_gauge() == 1.0, within=10, what="the new leader")
        paused = httpx.post(
            f"{standby.admin}/releases/support/pause",
            headers={"authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )
        assert paused.status_code == 200, paused.text
        assert decisions() == ["start", "pause"], "the new leader did not start it again"
        table = client.CoreV1Api(api).read_namespaced_config_map(
            f"{PREFIX}-support-routing", NAMESPACE
        )
        assert '"canaryWeight":10.0' in table.data["routing.json"]
        events = client.CoreV1Api(api).list_namespaced_event(NAMESPACE).items
        reasons = {(e.involved_object.kind, e.involved_object.name, e.reason) for e in events}
        assert ("Deployment", "shop-app", "Started") in reasons
        assert ("Deployment", "shop-app", "Paused") in reasons
        assert ("Deployment", "shop-app", "WeightSet") in reasons
        paused_events = [e.message for e in events if e.reason == "Paused"]
        assert paused_events and paused_events[0].startswith(
            "release support: rollout 1: pause by admin-api"
        )
        print(f"takeover after SIGKILL: {takeover:.2f}s (lease duration 3s, retry 0.5s)")
    finally:
        for member in replicas:
            member.stop()
