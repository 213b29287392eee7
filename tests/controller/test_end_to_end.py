"""The whole loop on loopback: traffic through the proxy, request spans and scores into the
Langfuse emulator, the controller reading them back, judging, moving the emulator's
prompt labels and the proxy's weights."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from coalmine.emulator.settings import EmulatorSettings
from controller.labels import LangfusePromptLabels
from controller.service import ControllerService, build_service
from controller.settings import ControllerSettings
from controller.source.budget import BudgetSettings, RequestBudget
from controller.source.langfuse import LangfuseSource, SourceSettings
from policies import load_policy
from policies.domain import Phase
from proxy.spans import OtlpSpanReporter, SpanExportSettings
from tests.emulator.emulator_support import LiveEmulator, start_emulator
from tests.proxy.proxy_support import RunningProxy, Upstream, serving, start_proxy

pytestmark = pytest.mark.slow

POLICY = """\
apiVersion: coalmine/v1
kind: Release
name: support
target:
  prompt: {{name: support-agent}}
  upstreams: {{stable: "{stable}", canary: "{canary}"}}
routing:
  stickiness: {{header: x-user-id}}
  readTimeout: 5s
steps:
  - {{weight: 30, minDuration: 2s}}
  - {{weight: 60, minDuration: 2s}}
analysis:
  interval: 1s
  alpha: 0.05
  minSamples: 20
  scoreTimeout: 20s
  metrics:
    - {{name: errors, source: error_rate, tolerance: 0.05, critical: true}}
    - name: helpfulness
      source: score
      score: helpfulness
      tolerance: 0.1
      effectSize: 0.2
      critical: true
"""

DEADLINE = 150.0


@dataclass
class Loop:
    emulator: LiveEmulator
    stable: Upstream
    canary: Upstream
    proxy: RunningProxy
    service: ControllerService
    http: httpx.Client
    canary_score: float = 0.8
    """Mean helpfulness the evaluator gives the canary's answers."""

    def label(self, label: str) -> int:
        response = self.http.get("/api/public/v2/prompts/support-agent", params={"label": label})
        response.raise_for_status()
        return int(response.json()["version"])

    def phase(self) -> Phase | None:
        release = self.service.state.release("support")
        return None if release is None else release.phase


def _traffic(loop: Loop, stop: threading.Event, errors: list[str]) -> None:
    """Users send requests; an evaluator scores each answered one by its arm."""
    rng = random.Random(5)
    with httpx.Client(base_url=loop.proxy.url, timeout=10.0) as client:
        while not stop.is_set():
            trace_id = uuid.uuid4().hex
            response = client.post(
                "/v1/chat",
                json={"q": "hi"},
                headers={
                    "x-user-id": f"user-{rng.randrange(100_000)}",
                    "traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01",
                },
            )
            if response.status_code != 200:
                continue
            mean = 0.8 if response.json()["upstream"] == "stable" else loop.canary_score
            value = min(1.0, max(0.0, rng.gauss(mean, 0.1)))
            scored = loop.http.post(
                "/api/public/scores",
                json={"traceId": trace_id, "name": "helpfulness", "value": value},
            )
            if scored.status_code >= 300:
                errors.append(scored.text)
            time.sleep(0.01)


@pytest.fixture
def loop(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Loop]:
    keys = uuid.uuid4().hex[:8]
    settings = EmulatorSettings(public_key=f"pk-lf-{keys}", secret_key=f"sk-lf-{keys}")
    emulator = start_emulator(settings)
    stable, canary = Upstream("stable"), Upstream("canary")
    running: list[RunningProxy] = []
    with (
        serving(stable) as stable_served,
        serving(canary) as canary_served,
        emulator.client() as http,
    ):
        for version, label in ((1, "production"), (2, "canary")):
            created = http.post(
                "/api/public/v2/prompts",
                json={"name": "support-agent", "prompt": f"v{version}", "labels": [label]},
            )
            assert created.status_code in (200, 201), created.text
        policy_file = tmp_path / "support.yaml"
        policy_file.write_text(
            POLICY.format(stable=stable_served.base_url, canary=canary_served.base_url)
        )
        state = tmp_path / "state.db"
        spans = OtlpSpanReporter(
            emulator.base_url,
            settings.public_key,
            settings.secret_key,
            SpanExportSettings(flush_interval=0.2),
        )
        proxy = start_proxy([load_policy(policy_file)], running, spans=spans, state=state)
        budget = RequestBudget(BudgetSettings(per_minute=100_000))
        source = LangfuseSource(
            emulator.base_url,
            settings.public_key,
            settings.secret_key,
            budget=budget,
            settings=SourceSettings(settle=1.0, lookback=20.0),
        )
        labels = LangfusePromptLabels(
            emulator.base_url, settings.public_key, settings.secret_key, budget=budget
        )
        controller_settings = ControllerSettings(state=state, metrics_listen=None)
        service = build_service(controller_settings, [policy_file], source=source, labels=labels)
        built = Loop(emulator, stable, canary, proxy, service, http)
        try:
            yield built
        finally:
            service.stop()
            labels.close()
            for each in running:
                each.served.stop()
            emulator.stop()
    assert not emulator.checked.violations


def _run(loop: Loop, canary_score: float, until: set[Phase]) -> float:
    loop.canary_score = canary_score
    stop = threading.Event()
    errors: list[str] = []
    traffic = threading.Thread(target=_traffic, args=(loop, stop, errors))
    traffic.start()
    deadline = time.monotonic() + DEADLINE
    try:
        while loop.phase() not in until:
            assert time.monotonic() < deadline, f"still {loop.phase()} after {DEADLINE} s"
            loop.service.tick()
            time.sleep(0.5)
    finally:
        stop.set()
        traffic.join()
    assert errors == []
    return time.monotonic()


def test_a_good_canary_is_promoted_through_every_step(loop: Loop) -> None:
    _run(loop, 0.8, {Phase.PROMOTED, Phase.ROLLED_BACK, Phase.PAUSED})
    decisions = [record.decision for record in loop.service.state.decisions("support")]
    assert decisions == ["start", "advance", "promote"]
    assert loop.phase() is Phase.PROMOTED
    assert (loop.label("production"), loop.label("canary")) == (2, 2)
    # the canary build takes all traffic once promoted
    loop.proxy.wait_for(1.0, "coalmine_proxy_canary_weight_ratio", release="support")
    assert loop.canary.seen and loop.stable.seen


def test_a_bad_canary_is_rolled_back_and_the_proxy_stops_sending_it_traffic(loop: Loop) -> None:
    loop.canary.fail_every = 3
    _run(loop, 0.5, {Phase.PROMOTED, Phase.ROLLED_BACK, Phase.PAUSED})
    assert loop.phase() is Phase.ROLLED_BACK
    decisions = [record.decision for record in loop.service.state.decisions("support")]
    assert decisions == ["start", "rollback"]
    assert (loop.label("production"), loop.label("canary")) == (1, 1)
    loop.proxy.wait_for(0.0, "coalmine_proxy_canary_weight_ratio", release="support")
    served = len(loop.canary.seen)
    with httpx.Client(base_url=loop.proxy.url) as client:
        for index in range(50):
            client.post("/v1/chat", json={}, headers={"x-user-id": f"late-{index}"})
    assert len(loop.canary.seen) == served
