"""One run of a dataset rung: every item through both arms, recorded and scored.

The run's own thread lists the dataset's items, then starts ``concurrency`` workers
per arm, each arm's workers taking the items in the same order so that the application
sees both arms at once. A worker calls the arm, records the item as an
experiment item of the arm's run (two spans over OTLP), scores the answer when coalmine
scores it (HTTP or Python evaluator, written to Langfuse as an observation score on the
task span) and stops there when Langfuse-managed judges score it. Once every item ran,
the judges' scores are read back until all came or ``scoreTimeout`` passed since the
last item ran (on the run's clock); then the verdict (``verdict.decide``).

Stopping (``stop``) makes every worker return before its next call or write; a call in
flight ends within its timeout and its answer is dropped. A stopped run has no result
of its own: the caller has forgotten it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx

from controller.ladder.arm_calls import call_arm, score_body
from controller.ladder.endpoints import ArmEndpoint
from controller.ladder.evaluators import (
    EvaluatorError,
    EvaluatorLoadError,
    FunctionCache,
    HttpScorer,
    PythonScorer,
    Scorer,
)
from controller.ladder.experiment_spans import ItemRun, encode_export, experiment_id
from controller.ladder.experiment_spans import item_ids as derive_item_ids
from controller.ladder.judge_scores import await_judge_scores
from controller.ladder.langfuse_api import LadderApi, LangfuseCallError, RunStoppedError
from controller.ladder.verdict import (
    GateOutcome,
    GateResult,
    ItemRecord,
    Side,
    decide,
    evidence,
    paired_settings,
)
from policies.domain import Arm
from policies.model import DatasetGate

__all__ = ["ARM_NAMES", "DatasetRun", "RunKey", "RunServices", "run_name"]

log = logging.getLogger("coalmine.controller.dataset_gate")

ARM_NAMES: Final = {Arm.BASELINE: "baseline", Arm.CANARY: "candidate"}
"""How the runs, the evidence and the reasons name the arms."""
SCORE_POLL_INTERVAL: Final = 10.0
"""Seconds between two reads of the judges' scores, per batch of trace ids read (so a
large dataset's reads keep within Langfuse's rate limits)."""
NO_JUDGE_SCORE: Final = "no judge score within scoreTimeout"


class RunFailedError(Exception):
    """A worker failed: the run ends without a verdict."""


@dataclass(frozen=True, slots=True)
class RunKey:
    release: str
    rollout: int
    attempt: int


def run_name(key: RunKey, arm: Arm) -> str:
    """The experiment name of one arm of one attempt (unique per arm and attempt)."""
    return f"coalmine {key.release} rollout {key.rollout} attempt {key.attempt} {ARM_NAMES[arm]}"


@dataclass(frozen=True, slots=True)
class RunServices:
    """What every run of a process shares."""

    api: LadderApi
    functions: FunctionCache
    app_transport: httpx.BaseTransport | None
    clock: Callable[[], float]
    """The time ``scoreTimeout`` is measured on."""
    poll_interval: float = SCORE_POLL_INTERVAL


@dataclass(frozen=True, slots=True)
class _Item:
    record: ItemRecord
    input: Any
    expected_output: Any
    metadata: Any


@dataclass(frozen=True, slots=True)
class _Arms:
    """What the run knows about its two experiments once the dataset is found."""

    dataset_id: str
    experiment_ids: Mapping[Arm, str]


class DatasetRun:
    """One (release, rollout, attempt)'s run; ``start`` it, read ``result``, ``stop`` it."""

    def __init__(
        self,
        key: RunKey,
        gate: DatasetGate,
        arms: Mapping[Arm, ArmEndpoint],
        services: RunServices,
        *,
        started_at: float,
    ) -> None:
        self.key = key
        self.gate = gate
        self.arms = {arm: arms[arm] for arm in ARM_NAMES}
        self.api = services.api
        self.functions = services.functions
        self.clock = services.clock
        self.poll_interval = services.poll_interval
        self._app_transport = services.app_transport
        self._settings = paired_settings(gate)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._items: list[_Item] = []
        self._refused = 0
        self._last_ran: float | None = None
        self._failure: str | None = None
        self._phase = "starting"
        self._result: GateResult | None = None
        self._experiments: _Arms | None = None
        self._scorer: Scorer | None = None
        self._context: dict[str, Any] = {
            "dataset": gate.name,
            "release": key.release,
            "rollout": key.rollout,
            "attempt": key.attempt,
            "evaluator": _evaluator_kind(gate),
            "startedAt": started_at,
            "runNames": {ARM_NAMES[arm]: run_name(key, arm) for arm in ARM_NAMES},
        }
        self._thread = threading.Thread(
            target=self._main, name=f"coalmine-dataset-{key.release}", daemon=True
        )

    # ------------------------------------------------------------------------- control

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """No more calls or writes; what is in flight ends on its own."""
        self._stop.set()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def result(self) -> GateResult:
        """The verdict, or (outcome None) the progress so far."""
        with self._lock:
            if self._result is not None:
                return self._result
            records = [item.record for item in self._items]
            ran = sum(
                item.record.candidate.ran and item.record.baseline.ran for item in self._items
            )
            summary = evidence(self.gate, records, self._refused, self._context)
            phase = self._phase
        summary["phase"] = phase
        reason = f"dataset {self.gate.name}: {phase}"
        if records:
            reason += f" ({ran} of {len(records)} items run on both arms)"
        return GateResult(None, reason, summary)

    # ------------------------------------------------------------------------- the run

    def _main(self) -> None:
        try:
            self._run()
        except RunStoppedError:
            return
        except (LangfuseCallError, EvaluatorLoadError, RunFailedError) as error:
            self._finish_inconclusive(str(error))
        except Exception as error:  # the run's thread must end with a result, whatever broke
            if self._stop.is_set():
                return  # stopped: its connections may be closed under it
            log.exception("dataset run %s failed", self.key)
            self._finish_inconclusive(f"the run failed: {type(error).__name__}: {error}")

    def _run(self) -> None:
        gate = self.gate
        self._set_phase("listing the dataset's items")
        project = self.api.project_id(self._stop)
        dataset_id = self.api.dataset_id(gate.name, self._stop)
        if dataset_id is None:
            self._finish_inconclusive(
                f"no dataset named '{gate.name}' in the Langfuse project (create it and its "
                "items first)"
            )
            return
        raw_items = self.api.dataset_items(gate.name, self._stop)
        experiments = _Arms(
            dataset_id,
            {arm: experiment_id(project, dataset_id, run_name(self.key, arm)) for arm in ARM_NAMES},
        )
        with self._lock:
            self._experiments = experiments
            self._context["datasetId"] = dataset_id
            self._context["experimentIds"] = {
                ARM_NAMES[arm]: experiments.experiment_ids[arm] for arm in ARM_NAMES
            }
            self._items = [_item(raw) for raw in raw_items]
        if not raw_items:
            self._finish_inconclusive(f"dataset '{gate.name}' has no active items")
            return
        with httpx.Client(transport=self._app_transport, limits=_limits(gate)) as http:
            self._scorer = self._make_scorer(http)
            self._set_phase("running the items")
            self._run_items(http)
            if gate.evaluator.langfuse:
                self._set_phase("waiting for the judges' scores")
                self._collect_judge_scores()
        with self._lock:
            self._result = decide(
                gate, [item.record for item in self._items], self._refused, self._context
            )
            log.info("dataset run %s: %s", self.key, self._result.reason)

    def _make_scorer(self, http: httpx.Client) -> Scorer | None:
        evaluator = self.gate.evaluator
        score = self.gate.metric.score
        if evaluator.http is not None:
            return HttpScorer(evaluator.http, score, http)
        if evaluator.python is not None:
            return PythonScorer(self.functions.get(evaluator.python), score)
        return None

    def _run_items(self, http: httpx.Client) -> None:
        """Each arm's workers take the items in the same order, ``concurrency`` at a
        time. Daemon threads, not an executor's: a call in flight must not hold up the
        process's exit."""
        runnable = [item for item in self._items if item.record.skipped is None]
        workers = [
            threading.Thread(
                target=self._worker,
                args=(http, arm, queue),
                name=f"coalmine-dataset-{self.key.release}-{ARM_NAMES[arm]}",
                daemon=True,
            )
            for arm, queue in ((arm, deque(runnable)) for arm in ARM_NAMES)
            for _ in range(min(self.gate.concurrency, len(runnable)))
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if self._failure is not None:
            raise RunFailedError(self._failure)
        if self._stop.is_set():
            raise RunStoppedError

    def _worker(self, http: httpx.Client, arm: Arm, queue: deque[_Item]) -> None:
        while not self._stop.is_set():
            try:
                item = queue.popleft()
            except IndexError:
                return
            self._side(http, item, arm)

    def _side(self, http: httpx.Client, item: _Item, arm: Arm) -> None:
        """One arm's call of one item, its spans and its score."""
        if self._stop.is_set():
            return
        try:
            self._run_side(http, item, arm)
        except RunStoppedError:
            return
        except LangfuseCallError as error:
            self._fail(str(error))
        except Exception as error:  # a worker must not die silently: the run ends with it
            if not self._stop.is_set():
                log.exception("dataset run %s: item %s failed", self.key, item.record.item_id)
            self._fail(f"the run failed: {type(error).__name__}: {error}")

    def _fail(self, message: str) -> None:
        """End the run without a verdict (unless it was stopped already)."""
        with self._lock:
            if self._stop.is_set():
                return
            self._failure = message
        self._stop.set()

    def _run_side(self, http: httpx.Client, item: _Item, arm: Arm) -> None:
        assert self._experiments is not None
        record = item.record
        side = _side_of(record, arm)
        experiment = self._experiments.experiment_ids[arm]
        ids = derive_item_ids(experiment, record.item_id)
        start = time.time_ns()
        output, failure = call_arm(
            http,
            self.arms[arm],
            self.gate.path,
            item.input,
            timeout=self.gate.request_timeout,
            ids=ids,
        )
        end = time.time_ns()
        if self._stop.is_set():
            return
        run = ItemRun(
            ids=ids,
            experiment_id=experiment,
            run_name=run_name(self.key, arm),
            description=f"coalmine dataset rung: the {ARM_NAMES[arm]} of release "
            f"{self.key.release}",
            dataset_id=self._experiments.dataset_id,
            item_id=record.item_id,
            input=item.input,
            expected_output=item.expected_output,
            item_metadata=item.metadata,
            output=output,
            failure=failure,
            start_ns=start,
            end_ns=end,
            metadata=self._metadata(arm, record.item_id),
        )
        self.api.export_spans(encode_export([run]), self._stop)
        evaluation = None
        detail = None
        if failure is None and self._scorer is not None:
            try:
                evaluation = self._scorer(
                    input=item.input,
                    output=output,
                    expected_output=item.expected_output,
                    metadata=item.metadata,
                )
            except EvaluatorError as error:
                detail = f"item {record.item_id}, {ARM_NAMES[arm]}: {error}"
            if evaluation is not None and not self._stop.is_set():
                body = score_body(
                    ids, self.gate.metric.score, evaluation, self._score_metadata(arm)
                )
                self.api.write_score(body, self._stop)
        with self._lock:
            side.ran = True
            side.failure = failure
            if failure is None and self._scorer is None:
                side.unscored = "awaiting a judge score"
            elif detail is not None:
                side.unscored, side.detail = "evaluator failed", detail
            elif evaluation is not None:
                self._accept(side, evaluation.value, record.item_id, arm)
            self._last_ran = self.clock()

    def _metadata(self, arm: Arm, item_id: str) -> dict[str, Any]:
        assert self._experiments is not None
        return {
            "experiment_name": f"coalmine dataset rung {self.key.release}",
            "experiment_run_name": run_name(self.key, arm),
            "dataset_id": self._experiments.dataset_id,
            "dataset_item_id": item_id,
            **self._score_metadata(arm),
        }

    def _score_metadata(self, arm: Arm) -> dict[str, Any]:
        return {
            "coalmine_release": self.key.release,
            "coalmine_rollout": self.key.rollout,
            "coalmine_attempt": self.key.attempt,
            "coalmine_arm": ARM_NAMES[arm],
        }

    def _accept(self, side: Side, value: object, item_id: str, arm: Arm) -> None:
        """Take a score, or refuse and count it (call with the lock held)."""
        if not side.take(value, self._settings, f"item {item_id}, {ARM_NAMES[arm]}"):
            self._refused += 1

    # ------------------------------------------------------------------------- judges

    def _collect_judge_scores(self) -> None:
        """Read the EVAL scores on the task spans until each answered side has one, or
        ``scoreTimeout`` passed since the last item ran."""
        assert self._experiments is not None
        waiting: dict[str, str] = {}
        sides: dict[str, tuple[ItemRecord, Arm]] = {}
        with self._lock:
            for item in self._items:
                for arm in ARM_NAMES:
                    side = _side_of(item.record, arm)
                    if side.ran and side.failure is None and side.value is None:
                        experiment = self._experiments.experiment_ids[arm]
                        ids = derive_item_ids(experiment, item.record.item_id)
                        waiting[ids.trace_id] = ids.task_span_id
                        sides[ids.trace_id] = (item.record, arm)
            deadline = (self._last_ran or self.clock()) + self.gate.score_timeout

        def take(trace_id: str, value: object) -> None:
            record, arm = sides[trace_id]
            with self._lock:
                self._accept(_side_of(record, arm), value, record.item_id, arm)

        missing = await_judge_scores(
            self.api,
            waiting,
            self.gate.metric.score,
            take=take,
            clock=self.clock,
            deadline=deadline,
            interval=self.poll_interval,
            stop=self._stop,
        )
        with self._lock:
            for trace_id in missing:
                record, arm = sides[trace_id]
                _side_of(record, arm).unscored = NO_JUDGE_SCORE

    # ------------------------------------------------------------------------- state

    def _set_phase(self, phase: str) -> None:
        with self._lock:
            self._phase = phase

    def _finish_inconclusive(self, why: str) -> None:
        with self._lock:
            records = [item.record for item in self._items]
            summary = evidence(self.gate, records, self._refused, self._context)
            summary["problem"] = why
            self._result = GateResult(
                GateOutcome.INCONCLUSIVE, f"dataset {self.gate.name}: {why}", summary
            )
        log.warning("dataset run %s: %s", self.key, why)


def _item(raw: Mapping[str, Any]) -> _Item:
    record = ItemRecord(item_id=str(raw["id"]))
    if raw.get("input") is None:
        record.skipped = "no input"  # as the SDK runner, which skips such items
    return _Item(record, raw.get("input"), raw.get("expectedOutput"), raw.get("metadata"))


def _side_of(record: ItemRecord, arm: Arm) -> Side:
    return record.candidate if arm is Arm.CANARY else record.baseline


def _evaluator_kind(gate: DatasetGate) -> str:
    evaluator = gate.evaluator
    if evaluator.http is not None:
        return "http"
    if evaluator.python is not None:
        return "python"
    return "langfuse"


def _limits(gate: DatasetGate) -> httpx.Limits:
    # both arms' workers plus the HTTP evaluator's calls from the same workers
    connections = 4 * gate.concurrency
    return httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
