"""``coalmine proxy --workers N``: worker processes share the port, and the metrics
endpoint exports their sum (state gauges: the least of them) and a few series per worker."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import ProxyMetrics
from proxy.settings import ProxySettings
from proxy.workers import WorkerPool, WorkerSpec, merge
from tests.proxy.proxy_support import UpstreamServed, make_policy, wait_until

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _worker_registry(requests: int, weight: float, version: int, seconds: float) -> str:
    registry = CollectorRegistry()
    counter = Counter("coalmine_proxy_requests", "r", ["release", "arm"], registry=registry)
    counter.labels("support", "baseline").inc(requests)
    gauge = Gauge("coalmine_proxy_canary_weight_ratio", "w", ["release"], registry=registry)
    gauge.labels("support").set(weight)
    table = Gauge("coalmine_proxy_routing_table_version", "v", ["release"], registry=registry)
    table.labels("support").set(version)
    flight = Gauge("coalmine_proxy_in_flight_requests", "f", registry=registry)
    flight.set(2)
    histogram = Histogram(
        "coalmine_proxy_request_duration_seconds", "d", buckets=(0.1, 1.0), registry=registry
    )
    histogram.observe(seconds)
    return generate_latest(registry).decode()


def _merged_samples(*texts: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families = [list(text_string_to_metric_families(text)) for text in texts]
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in merge(families)
        for sample in family.samples
    }


def test_counters_histograms_and_amounts_are_summed_over_workers() -> None:
    merged = _merged_samples(_worker_registry(3, 0.05, 7, 0.05), _worker_registry(4, 0.05, 7, 0.5))
    release = (("arm", "baseline"), ("release", "support"))
    assert merged[("coalmine_proxy_requests_total", release)] == 7
    assert merged[("coalmine_proxy_in_flight_requests", ())] == 4
    assert merged[("coalmine_proxy_request_duration_seconds_count", ())] == 2
    assert merged[("coalmine_proxy_request_duration_seconds_bucket", (("le", "0.1"),))] == 1
    assert merged[("coalmine_proxy_request_duration_seconds_bucket", (("le", "1.0"),))] == 2
    assert merged[("coalmine_proxy_request_duration_seconds_sum", ())] == pytest.approx(0.55)


def test_the_state_a_worker_applies_is_the_least_over_workers() -> None:
    """A worker that has not yet applied the newest routing table shows in the merge."""
    merged = _merged_samples(_worker_registry(1, 0.25, 8, 0.05), _worker_registry(1, 0.05, 7, 0.05))
    release = (("release", "support"),)
    assert merged[("coalmine_proxy_canary_weight_ratio", release)] == 0.05
    assert merged[("coalmine_proxy_routing_table_version", release)] == 7


def test_the_build_info_of_several_workers_stays_1() -> None:
    workers = [generate_latest(ProxyMetrics().registry).decode() for _ in range(3)]
    merged = _merged_samples(*workers)
    (value,) = [value for (name, _), value in merged.items() if name == "coalmine_build_info"]
    assert value == 1


def test_a_series_only_one_worker_has_is_exported_as_it_is() -> None:
    one = CollectorRegistry()
    Counter("coalmine_proxy_refused_requests", "r", ["reason"], registry=one).labels("x").inc(2)
    merged = _merged_samples(generate_latest(one).decode(), _worker_registry(1, 0.05, 7, 0.05))
    assert merged[("coalmine_proxy_refused_requests_total", (("reason", "x"),))] == 2


def test_a_port_already_served_is_refused_before_any_worker_starts(tmp_path: Path) -> None:
    policy = make_policy(stable="http://127.0.0.1:9", canary="http://127.0.0.1:9")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = ProxySettings(listen=f"127.0.0.1:{port}", spans=False, metrics_listen=None)
        pool = WorkerPool(WorkerSpec(settings, (policy,), (tmp_path,), {}, "warning"), 2)
        with pytest.raises(OSError, match=f"--listen: 127.0.0.1:{port}: Address already in use"):
            pool.start()
        assert pool.workers == []


def test_workers_need_a_port_they_can_share(tmp_path: Path) -> None:
    settings = ProxySettings(listen="127.0.0.1:0", spans=False, metrics_listen=None)
    pool = WorkerPool(WorkerSpec(settings, (), (tmp_path,), {}, "warning"), 2)
    with pytest.raises(ValueError, match="--listen: workers share one port: give it, not 0"):
        pool.start()
    assert pool.workers == []


def test_the_worker_count_is_bounded(tmp_path: Path) -> None:
    settings = ProxySettings(spans=False)
    spec = WorkerSpec(settings, (), (tmp_path,), {}, "warning")
    with pytest.raises(ValueError, match="--workers: 0 is not from 1 to 64"):
        WorkerPool(spec, 0)


# --- real processes --------------------------------------------------------------------

POLICY = """\
apiVersion: coalmine/v1
kind: Release
name: support
target:
  upstreams: {{stable: "{url}", canary: "{url}"}}
routing:
  stickiness: {{header: x-user-id}}
steps: [{{weight: 50}}]
analysis:
  metrics: [{{name: errors, source: error_rate, direction: lower, tolerance: 0.01}}]
"""


class WorkersProcess:
    """``coalmine proxy --workers 2`` (or ``coalmine run --proxy-workers 2``, its
    controller reading a Langfuse that is not there) in front of one upstream."""

    def __init__(self, tmp_path: Path, upstream_url: str, command: str = "proxy") -> None:
        policy = tmp_path / "support.yaml"
        policy.write_text(POLICY.format(url=upstream_url))
        self.listen = f"127.0.0.1:{free_port()}"
        metrics = f"127.0.0.1:{free_port()}"
        self.metrics_url = f"http://{metrics}/metrics"
        self.log_path = tmp_path / "proxy.log"
        environment = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("COALMINE_", "LANGFUSE_"))
        }
        environment["PYTHONPATH"] = str(REPO)
        args = ["--policy", str(policy), "--listen", self.listen, "--metrics-listen", metrics]
        if command == "proxy":
            args = ["proxy", *args, "--no-spans", "--workers", "2"]
        else:
            environment.update(
                COALMINE_ADMIN_TOKEN=secrets.token_hex(16),
                LANGFUSE_BASE_URL=f"http://127.0.0.1:{free_port()}",
                LANGFUSE_PUBLIC_KEY="pk-lf-test",
                LANGFUSE_SECRET_KEY="sk-lf-test",
            )
            args = ["run", *args, "--state", str(tmp_path / "state.db")]
            args += ["--admin-listen", f"127.0.0.1:{free_port()}", "--proxy-workers", "2"]
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "coalmine.cli", *args],
            cwd=tmp_path,
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def samples(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """Every sample of the metrics endpoint by name; empty while it does not answer."""
        assert self.process.poll() is None, self.log_path.read_text()
        try:
            text = httpx.get(self.metrics_url, timeout=10).text
        except httpx.TransportError:
            return {}
        found: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found.setdefault(sample.name, []).append((sample.labels, sample.value))
        return found

    def per_worker(self, name: str) -> dict[str, float]:
        return {labels["worker"]: value for labels, value in self.samples().get(name, [])}

    def total(self, name: str) -> float:
        return sum(value for _, value in self.samples().get(name, []))

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode


@pytest.fixture(params=["proxy"])
def workers(
    request: pytest.FixtureRequest, tmp_path: Path, stable: UpstreamServed
) -> Iterator[WorkersProcess]:
    proxy = WorkersProcess(tmp_path, stable[1].base_url, request.param)
    try:
        wait_until(lambda: proxy.samples() != {}, within=60, what="the workers' metrics")
        yield proxy
    finally:
        proxy.stop()


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["proxy", "run"], indirect=True)
def test_both_workers_answer_and_the_endpoint_sums_their_counts(
    workers: WorkersProcess, stable: UpstreamServed
) -> None:
    pids = {int(labels["pid"]) for labels, _ in workers.samples()["coalmine_proxy_worker_info"]}
    assert len(pids) == 2
    assert {_parent_of(pid) for pid in pids} == {workers.process.pid}
    sent = 0

    def both_answered() -> bool:
        counts = workers.per_worker("coalmine_proxy_worker_requests_total").values()
        return len(counts) == 2 and min(counts) > 0

    # every request on a connection of its own: the kernel picks a worker per connection
    while sent < 400 and not both_answered():
        for _ in range(10):
            answer = httpx.get(f"http://{workers.listen}/v1/ping", headers={"x-user-id": "u"})
            assert answer.status_code == 200
            sent += 1
    wait_until(
        lambda: workers.total("coalmine_proxy_requests_total") == sent,
        within=10,
        what=f"{sent} requests counted",
    )
    by_worker = workers.per_worker("coalmine_proxy_worker_requests_total")
    assert set(by_worker) == {"0", "1"}
    assert all(count > 0 for count in by_worker.values()), by_worker
    assert sum(by_worker.values()) == sent
    assert len(stable[0].seen) == sent
    assert workers.total("coalmine_proxy_workers") == 2
    assert workers.per_worker("coalmine_proxy_worker_up") == {"0": 1.0, "1": 1.0}
    assert workers.stop() == 0
    assert not any(_alive(pid) for pid in pids)


@pytest.mark.slow
def test_a_worker_that_dies_stops_the_proxy_with_status_1(workers: WorkersProcess) -> None:
    pids = [int(labels["pid"]) for labels, _ in workers.samples()["coalmine_proxy_worker_info"]]
    os.kill(pids[0], signal.SIGKILL)
    assert workers.process.wait(timeout=60) == 1
    assert not _alive(pids[1])
    assert "was killed by signal 9: stopping the proxy" in workers.log_path.read_text()
