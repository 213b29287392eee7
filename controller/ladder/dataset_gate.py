"""The dataset rung's runner: what the controller's loop calls.

Before any user sees a candidate, every ACTIVE item of a Langfuse dataset is sent
through the candidate and the baseline, each arm recorded in Langfuse as an experiment
of the dataset (the two runs side by side in the UI), scored by the gate's evaluator,
and compared item by item with the paired test (``controller.judge.paired``).

``DatasetGates`` holds the runs of this process, one per (release, rollout, attempt),
each on a thread of its own: ``ensure`` starts one and returns at once, ``result`` reads
its state (None for a run this process does not hold, e.g. after a restart: the loop
then starts the next attempt, whose experiments are named apart), ``cancel`` stops every
run of a release. See ``run.py`` for one run and ``verdict.py`` for its verdict.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx

from controller.ladder.endpoints import ArmEndpoint, arm_endpoints
from controller.ladder.evaluators import FunctionCache
from controller.ladder.langfuse_api import LadderApi
from controller.ladder.run import SCORE_POLL_INTERVAL, DatasetRun, RunKey, RunServices
from controller.ladder.verdict import GateOutcome, GateResult
from policies.domain import Arm
from policies.model import DatasetGate

__all__ = [
    "ArmEndpoint",
    "DatasetGates",
    "GateOutcome",
    "GateResult",
    "arm_endpoints",
]

log = logging.getLogger("coalmine.controller.dataset_gate")

CLOSE_WAIT = 5.0
"""Seconds ``close`` waits for each run's thread; a call in flight may outlast it."""


class DatasetGates:
    """The dataset runs of this process.

    ``transport`` reaches Langfuse, ``app_transport`` the application, the upstreams and
    an HTTP evaluator (tests pass their own). ``clock`` is the time ``scoreTimeout`` is
    measured on. ``request_counts`` counts the Langfuse requests by endpoint and status
    class, for metrics.
    """

    def __init__(
        self,
        *,
        base_url: str,
        public_key: str,
        secret_key: str,
        transport: httpx.BaseTransport | None = None,
        app_transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = LadderApi(base_url, public_key, secret_key, transport=transport)
        self.poll_interval = SCORE_POLL_INTERVAL
        """Seconds between two reads of the judges' scores."""
        self._app_transport = app_transport
        self._clock = clock
        self._functions = FunctionCache()
        self._runs: dict[RunKey, DatasetRun] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def request_counts(self) -> Counter[tuple[str, str]]:
        return self.api.request_counts

    def ensure(
        self,
        release: str,
        rollout: int,
        attempt: int,
        gate: DatasetGate,
        arms: dict[Arm, ArmEndpoint],
        now: float,
    ) -> None:
        """Start the run of (release, rollout, attempt) unless this process holds it."""
        key = RunKey(release, rollout, attempt)
        with self._lock:
            if self._closed or key in self._runs:
                return
            services = RunServices(
                self.api, self._functions, self._app_transport, self._clock, self.poll_interval
            )
            run = DatasetRun(key, gate, arms, services, started_at=now)
            self._runs[key] = run
        log.info("dataset run %s of dataset '%s' starts", key, gate.name)
        run.start()

    def result(self, release: str, rollout: int, attempt: int, now: float) -> GateResult | None:
        """The run's verdict or progress; None when this process holds no such run."""
        with self._lock:
            run = self._runs.get(RunKey(release, rollout, attempt))
        return None if run is None else run.result()

    def cancel(self, release: str) -> None:
        """Stop and forget every run of ``release``."""
        with self._lock:
            keys = [key for key in self._runs if key.release == release]
            runs = [self._runs.pop(key) for key in keys]
        for run in runs:
            run.stop()

    def close(self) -> None:
        """Stop every run, wait a little for their threads, close the connections."""
        with self._lock:
            self._closed = True
            runs = list(self._runs.values())
            self._runs.clear()
        for run in runs:
            run.stop()
        for run in runs:
            run.join(CLOSE_WAIT)
        self.api.close()
