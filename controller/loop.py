"""The control loop: poll, judge, act, reconcile, one ``tick(now)`` at a time.

``tick`` is steppable: tests drive it with a fake clock, the scheduler only calls it.
Each tick polls the source once for every release, stores what it read with the source's
cursors, feeds the judge's evidence, then for every release: finishes journalled actions
left pending (by a crash or a temporary error), starts pending releases whose candidate
exists, judges running ones when their interval is due, and carries out what the judge
decided. Every decision is logged with its evidence and its actions journalled in the
same transaction, before anything is done; every action is idempotent and verified.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from coalmine.shared.routing_tables.store import RoutingTableStore, VersionConflictError
from coalmine.shared.routing_tables.table import ShadowRoute, initial_table, shadow_route
from controller.cluster.events import EventRecorder, NoopEventRecorder
from controller.errors import (
    LabelPermanentError,
    LabelTemporaryError,
    ManualActionError,
    ManualActionIncompleteError,
    NotLeaderError,
    RoutingConflictError,
    StaleStateError,
)
from controller.evidence_log import judgement_summary
from controller.judge import Decision, Evidence, Judgement, StepStatus, Trace, judge
from controller.labels import PromptLabels
from controller.release_store import (
    Action,
    ActionKind,
    ActionStatus,
    ControllerState,
    LabelMove,
    ReleaseState,
)
from controller.samples import Cursors, ScoreSample, TraceSample
from controller.source import SampleSource
from policies.domain import FINISHED, Phase
from policies.model import Policy

log = logging.getLogger("coalmine.controller")

SOURCE = "langfuse"
JUDGEMENTS_KEPT = 1440
"""Judgements kept per running release for the dashboard's charts."""
HELD_WHILE_BLIND = frozenset({Decision.ADVANCE, Decision.PROMOTE})
"""Decisions never taken on a tick whose poll of Langfuse failed, or that has not read
Langfuse up to now (a new leader reading a release's history again)."""
CAUGHT_UP_WITHIN = 60.0
"""A poll whose cursors stop further than this before now is still catching up."""
PRUNE_EVERY = 3600.0
"""Seconds between two clean-ups of stored samples."""
EVENT_REASONS = {
    "start": "Started",
    "advance": "Advanced",
    "promote": "Promoted",
    "rollback": "RolledBack",
    "pause": "Paused",
    "resume": "Resumed",
    "abort": "Aborted",
}
"""The Kubernetes Event reason of each decision."""
WARNINGS = frozenset({"rollback", "pause", "abort"})

Notify = Callable[[str, ReleaseState, str], None]
"""Called with (event, release, reason) on promote, rollback and pause."""


RETRIED = (LabelTemporaryError, RoutingConflictError)
"""Errors of a journalled action that leave it pending, to be carried out next tick."""
REFUSED = (LabelPermanentError, ValueError)
"""Errors of a journalled action that mark it failed."""


def policy_digest(policy: Policy) -> str:
    return hashlib.sha256(policy.model_dump_json().encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class _Grounds:
    """Who takes a decision, why, and the evidence it rests on, as the journal logs them."""

    actor: str
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Live:
    """What the controller keeps in memory per release (rebuilt from the state file)."""

    evidence: Evidence
    started_at: float
    next_look: float
    last: Judgement | None = None


@dataclass(slots=True)
class TickReport:
    """What one tick did."""

    polled: bool = False
    poll_error: str | None = None
    new_traces: int = 0
    new_scores: int = 0
    catching_up: str | None = None
    """Why the poll has not read up to now (None: it has)."""
    decisions: list[tuple[str, str]] = field(default_factory=list)
    actions: int = 0
    action_errors: list[str] = field(default_factory=list)


class Controller:
    """Drives every release its policies describe."""

    def __init__(
        self,
        *,
        state: ControllerState,
        routing: RoutingTableStore,
        source: SampleSource,
        labels: PromptLabels,
        policies: Callable[[], Mapping[str, Policy]],
        notify: Notify | None = None,
        events: EventRecorder | None = None,
    ) -> None:
        self.state = state
        self.fence: Callable[[], None] = lambda: None
        """Raises NotLeaderError, naming the leader, when this replica may not act
        (cluster mode: it does not hold the Lease)."""
        self.events: EventRecorder = events or NoopEventRecorder()
        self.routing = routing
        self.source = source
        self.labels = labels
        self.policies = policies
        self.notify = notify
        self.lock = threading.RLock()
        self.live: dict[str, _Live] = {}
        self.histories: dict[str, tuple[Judgement, ...]] = {}
        """The latest judgements per release, oldest first, kept after it ends (tuples:
        replaced, never changed in place, so the admin API's threads read them without
        the lock)."""
        self._next_prune = 0.0
        self.last_poll_ok: float | None = None
        self.last_poll_error: str | None = None

    def is_leader(self) -> bool:
        """Whether this replica may act."""
        try:
            self.fence()
        except NotLeaderError:
            return False
        return True

    def forget(self) -> None:
        """Drop what is held in memory, so the next tick rebuilds it from the state store
        (a replica that has just become the leader)."""
        with self.lock:
            self.live.clear()
            self._next_prune = 0.0

    # -- the loop ------------------------------------------------------------------------

    def tick(self, now: float) -> TickReport:
        with self.lock:
            report = TickReport()
            policies = dict(self.policies())
            self._poll(policies, now, report)
            for name, policy in policies.items():
                try:
                    self._step(name, policy, now, report)
                except StaleStateError as error:  # another writer came first: judge again
                    log.warning("release %s: %s", name, error)
                    report.action_errors.append(f"{name}: {error}")
                except Exception as error:  # one release's trouble never stops the others
                    log.exception("release %s: tick failed", name)
                    report.action_errors.append(f"{name}: {error}")
            for release in self.state.releases():
                if release.name not in policies and release.phase not in FINISHED:
                    self._abort_orphan(release, now, report)
            if now >= self._next_prune:
                self._prune(policies, now)
            return report

    def _prune(self, policies: Mapping[str, Policy], now: float) -> None:
        """Forget stored samples that no running release can use any more."""
        running = [
            release.name
            for release in self.state.releases()
            if release.phase not in FINISHED and release.phase is not Phase.PENDING
        ]
        longest = max((policy.analysis.score_timeout for policy in policies.values()), default=0.0)
        deleted = self.state.prune_samples(running, now - 2 * longest - PRUNE_EVERY)
        if deleted:
            log.info("forgot %d stored samples no running release needs", deleted)
        self._next_prune = now + PRUNE_EVERY

    def _poll(self, policies: Mapping[str, Policy], now: float, report: TickReport) -> None:
        running = {
            name: policy
            for name, policy in policies.items()
            if (release := self.state.release(name)) is not None
            and release.phase in (Phase.CANARY, Phase.PAUSED)
        }
        if not running:
            return
        cursors = self.state.cursors(SOURCE) or _first_cursors(running, self.state, now)
        poll = self.source.poll(running, cursors, now)
        report.polled = True
        if not poll.ok:
            report.poll_error = poll.error
            self.last_poll_error = poll.error
            log.warning("poll failed: %s", poll.error)
            return
        self.last_poll_ok = now
        self.last_poll_error = None
        behind = now - min(poll.cursors.observations_from, poll.cursors.scores_from)
        if behind > CAUGHT_UP_WITHIN:
            report.catching_up = f"Langfuse read up to {behind:.0f}s before now"
        traces, scores = self.state.store_poll(SOURCE, poll.cursors, poll.traces, poll.scores)
        report.new_traces, report.new_scores = len(traces), len(scores)
        self._feed(traces, scores)

    def _feed(self, traces: list[TraceSample], scores: list[ScoreSample]) -> None:
        """Give new samples to the evidence of running releases."""
        by_trace: dict[str, str] = {}
        for trace in traces:
            live = self.live.get(trace.release)
            if live is None or trace.ts < live.started_at:
                continue
            live.evidence.add_trace(_trace(trace))
            by_trace[trace.trace_id] = trace.release
        if traces:
            # scores that came before their trace was seen
            for score in self.state.scores_of([trace.trace_id for trace in traces]):
                if score.trace_id in by_trace:
                    self._add_score(by_trace[score.trace_id], score)
        fresh = {score.trace_id for score in scores} - set(by_trace)
        owners = self.state.release_of_traces(sorted(fresh)) if fresh else {}
        for score in scores:
            release = owners.get(score.trace_id)
            if release is not None:
                self._add_score(release, score)

    def _add_score(self, release: str, score: ScoreSample) -> None:
        live = self.live.get(release)
        if live is not None:
            live.evidence.add_scores(score.trace_id, {score.name: score.value}, score.at)

    def _step(self, name: str, policy: Policy, now: float, report: TickReport) -> None:
        release = self.state.release(name)
        if release is None or (
            release.phase is Phase.PENDING and release.policy_digest != policy_digest(policy)
        ):
            release = ReleaseState(
                name=name, phase=Phase.PENDING, updated_at=now, policy_digest=policy_digest(policy)
            )
            self.state.save_release(release)
        self._run_pending_actions(name, policy, now, report)
        release = self.state.release(name) or release
        if release.phase is Phase.PENDING:
            self._maybe_start(release, policy, now, report)
            return
        if release.phase in FINISHED:
            self.live.pop(name, None)
            self._reconcile_weight(release, policy, now, report)
            return
        live = self._live(release, policy)
        self._reconcile_weight(release, policy, now, report)
        if release.phase is not Phase.CANARY or now < live.next_look:
            return
        live.evidence.advance(max(now, live.evidence.observed_until))
        step = StepStatus(release.step, release.step_started_at or now)
        judgement = judge(policy, live.evidence, step, now)
        live.last = judgement
        kept = self.histories.get(release.name, ())
        self.histories[release.name] = (*kept[-(JUDGEMENTS_KEPT - 1) :], judgement)
        live.next_look = now + policy.analysis.interval
        if judgement.decision is Decision.CONTINUE:
            return
        blind = report.poll_error or report.catching_up
        if blind is not None and judgement.decision in HELD_WHILE_BLIND:
            # evidence read before Langfuse failed, or not read up to now, may be stale or
            # partial: never move forward on it
            log.warning(
                "release %s: %s held: Langfuse not read up to now (%s)",
                release.name,
                judgement.decision.value,
                blind,
            )
            return
        self._carry_out(release, policy, judgement, now, report)

    # -- starting ------------------------------------------------------------------------

    def _maybe_start(
        self, release: ReleaseState, policy: Policy, now: float, report: TickReport
    ) -> None:
        stable = candidate = None
        prompt = policy.target.prompt
        if prompt is not None:
            try:
                stable = self.labels.version_of(prompt.name, prompt.stable_label)
                candidate = self.labels.version_of(prompt.name, prompt.canary_label)
            except (LabelTemporaryError, LabelPermanentError) as error:
                report.action_errors.append(f"{release.name}: {error}")
                return
            if candidate is None or candidate == stable:
                return
        elif policy.target.upstreams is None or policy.target.upstreams.canary is None:
            return
        weight = policy.steps[0].weight
        started = replace(
            release,
            phase=Phase.CANARY,
            step=0,
            step_starts=(now,),
            canary_weight=weight,
            stable_version=stable,
            candidate_version=candidate,
            updated_at=now,
            reason="candidate found",
        )
        reason = (
            f"candidate version {candidate} against stable version {stable}"
            if prompt is not None
            else "canary upstream configured"
        )
        self._decide(
            started,
            policy,
            "start",
            _Grounds("controller", reason),
            actions=[(ActionKind.SET_WEIGHT, {"weight": weight})],
            now=now,
            report=report,
        )

    def _live(self, release: ReleaseState, policy: Policy) -> _Live:
        live = self.live.get(release.name)
        started_at = release.started_at
        assert started_at is not None
        if live is not None and live.started_at == started_at:
            return live
        evidence = Evidence(policy, started_at)
        for index, at in enumerate(release.step_starts[1:], start=1):
            evidence.open_step(index, at)
        live = _Live(evidence, started_at, next_look=started_at + policy.analysis.interval)
        self.live[release.name] = live
        traces = self.state.traces(release.name, started_at)
        for trace in traces:
            evidence.add_trace(_trace(trace))
        for score in self.state.scores_for_release(release.name, started_at):
            evidence.add_scores(score.trace_id, {score.name: score.value}, score.at)
        return live

    # -- deciding and acting ---------------------------------------------------------------

    def _carry_out(
        self,
        release: ReleaseState,
        policy: Policy,
        judgement: Judgement,
        now: float,
        report: TickReport,
    ) -> None:
        decision = judgement.decision
        grounds = _Grounds("controller", judgement.reason, judgement_summary(judgement))
        if decision is Decision.ADVANCE:
            step = release.step + 1
            weight = policy.steps[step].weight
            advanced = replace(
                release,
                step=step,
                step_starts=(*release.step_starts, now),
                canary_weight=weight,
                updated_at=now,
                reason=judgement.reason,
            )
            self.live[release.name].evidence.open_step(step, now)
            actions = [(ActionKind.SET_WEIGHT, {"weight": weight})]
            self._decide(advanced, policy, "advance", grounds, actions, now=now, report=report)
        else:
            act = {
                Decision.PROMOTE: self._promote,
                Decision.ROLLBACK: self._rollback,
                Decision.PAUSE: self._pause,
            }[decision]
            act(release, policy, grounds, now=now, report=report)

    def _promote(
        self,
        release: ReleaseState,
        policy: Policy,
        grounds: _Grounds,
        *,
        now: float,
        report: TickReport,
    ) -> None:
        actions: list[tuple[ActionKind, dict[str, Any]]] = []
        prompt = policy.target.prompt
        if prompt is not None and release.candidate_version is not None:
            actions.append(_move_label(prompt.name, prompt.stable_label, release.candidate_version))
            actions.append(_move_label(prompt.name, prompt.canary_label, release.candidate_version))
        upstreams = policy.target.upstreams
        weight = 100.0 if upstreams is not None and upstreams.canary is not None else 0.0
        actions.append((ActionKind.SET_WEIGHT, {"weight": weight}))
        promoted = replace(
            release,
            phase=Phase.PROMOTED,
            canary_weight=weight,
            updated_at=now,
            reason=grounds.reason,
        )
        self._decide(promoted, policy, "promote", grounds, actions, now=now, report=report)

    def _rollback(
        self,
        release: ReleaseState,
        policy: Policy,
        grounds: _Grounds,
        *,
        now: float,
        report: TickReport,
    ) -> None:
        # the weight first: it is local and takes effect within a second
        actions: list[tuple[ActionKind, dict[str, Any]]] = [
            (ActionKind.SET_WEIGHT, {"weight": 0.0})
        ]
        prompt = policy.target.prompt
        if prompt is not None and release.stable_version is not None:
            if release.phase is Phase.PROMOTED:
                actions.append(
                    _move_label(
                        prompt.name,
                        prompt.stable_label,
                        self._version_before_promotion(release, prompt.name),
                    )
                )
            actions.append(_move_label(prompt.name, prompt.canary_label, release.stable_version))
        rolled = replace(
            release,
            phase=Phase.ROLLED_BACK,
            canary_weight=0.0,
            updated_at=now,
            reason=grounds.reason,
        )
        self._decide(rolled, policy, "rollback", grounds, actions, now=now, report=report)

    def _version_before_promotion(self, release: ReleaseState, prompt: str) -> int:
        """Where the stable label was before this release moved it (label history)."""
        assert release.stable_version is not None
        for move in reversed(self.state.label_moves(release.name)):
            promoted_here = (
                move.prompt == prompt
                and move.to_version == release.candidate_version
                and move.from_version is not None
            )
            if promoted_here and move.from_version is not None:
                return move.from_version
        return release.stable_version

    def _pause(
        self,
        release: ReleaseState,
        policy: Policy,
        grounds: _Grounds,
        *,
        now: float,
        report: TickReport,
    ) -> None:
        paused = replace(
            release,
            phase=Phase.PAUSED,
            resume_phase=release.phase,
            updated_at=now,
            reason=grounds.reason,
        )
        self._decide(paused, policy, "pause", grounds, [], now=now, report=report)

    def _decide(
        self,
        release: ReleaseState,
        policy: Policy,
        decision: str,
        grounds: _Grounds,
        actions: list[tuple[ActionKind, dict[str, Any]]],
        *,
        now: float,
        report: TickReport,
    ) -> None:
        """Log ``decision`` with the release's new state and journal its actions (one
        transaction), then carry the actions out and tell whoever listens."""
        actor, reason = grounds.actor, grounds.reason
        self.state.decide(
            release,
            at=now,
            decision=decision,
            actor=actor,
            reason=reason,
            evidence=grounds.evidence,
            actions=actions,
        )
        report.decisions.append((release.name, decision))
        log.info("release %s: %s by %s: %s", release.name, decision, actor, reason)
        self.events.record(
            release.name,
            EVENT_REASONS.get(decision, decision.title()),
            f"{decision} by {actor}: {reason}",
            warning=decision in WARNINGS,
        )
        self._run_pending_actions(release.name, policy, now, report)
        if self.notify is not None and decision in ("promote", "rollback", "pause"):
            self.notify(decision, release, reason)

    def _run_pending_actions(
        self, name: str, policy: Policy, now: float, report: TickReport
    ) -> None:
        for action in self.state.pending_actions(name):
            try:
                done = self._execute(action, policy, now)
            except RETRIED as error:
                report.action_errors.append(f"{name}: {error} (will retry)")
                log.warning("release %s: action %s will be retried: %s", name, action.id, error)
                self.events.record(
                    name, "ActionRetrying", f"{_describe(action)}: {error}", warning=True
                )
                return  # keep the order: later actions wait for this one
            except REFUSED as error:
                self.state.finish_action(
                    action, at=now, status=ActionStatus.FAILED, error=str(error)
                )
                report.action_errors.append(f"{name}: {error}")
                log.error("release %s: action %s failed: %s", name, action.id, error)
                self.events.record(
                    name, "ActionFailed", f"{_describe(action)}: {error}", warning=True
                )
                continue
            report.actions += 1
            self.events.record(name, *done)

    def _execute(self, action: Action, policy: Policy, now: float) -> tuple[str, str]:
        """Carry out one journalled action; its event's reason and message."""
        if action.kind is ActionKind.SET_WEIGHT:
            release = self.state.release(action.release)
            shadow = _wanted_shadow(policy, None if release is None else release.phase)
            self._write_weight(policy, float(action.intent["weight"]), shadow, now)
            self.state.finish_action(action, at=now)
            return "WeightSet", _describe(action)
        prompt = str(action.intent["prompt"])
        label = str(action.intent["label"])
        version = int(action.intent["version"])
        current = self.labels.version_of(prompt, label)
        if action.observed is None:
            self.state.observe_action(action, {"from": current})
            before = current
        else:
            before = action.observed.get("from")
        if current != version:
            self.labels.move(prompt, label, version)
        decision = self.state.decisions(action.release, limit=1)
        actor = decision[0].actor if decision else "controller"
        reason = decision[0].reason if decision else ""
        move = (
            None
            if before == version
            else LabelMove(
                release=action.release,
                prompt=prompt,
                label=label,
                from_version=before,
                to_version=version,
                at=now,
                actor=actor,
                reason=reason,
            )
        )
        self.state.finish_action(action, at=now, label_move=move)
        moved = "already there" if move is None else f"moved from version {before}"
        return "LabelMoved", f"{_describe(action)} ({moved})"

    def _write_weight(
        self, policy: Policy, weight: float, shadow: ShadowRoute | None, now: float
    ) -> None:
        """Make the routing table hold ``weight`` and ``shadow``."""
        if policy.target.upstreams is None:
            return  # a prompt-only release: no proxy routes it, the labels are the release
        wanted = {"canary_weight": weight, "shadow": shadow, "reason": "controller"}
        for _ in range(5):
            table = self.routing.read(policy.name)
            if table is None:
                fresh = initial_table(policy).model_copy(update=wanted)
                try:
                    self.routing.write(fresh, None)
                    return
                except VersionConflictError:
                    continue
            if table.canary_weight == weight and table.shadow == shadow:
                return
            try:
                self.routing.write(table.model_copy(update=wanted), table.version)
                return
            except VersionConflictError:
                continue
        raise RoutingConflictError(
            f"routing table of '{policy.name}' keeps changing under the writer"
        )

    def _reconcile_weight(
        self, release: ReleaseState, policy: Policy, now: float, report: TickReport
    ) -> None:
        """Level-triggered repair: the routing table holds the weight the state says, and
        the policy's shadow only while the rollout has not ended."""
        if policy.target.upstreams is None or self.state.pending_actions(release.name):
            return
        shadow = _wanted_shadow(policy, release.phase)
        table = self.routing.read(policy.name)
        if (
            table is not None
            and table.canary_weight == release.canary_weight
            and table.shadow == shadow
        ):
            return
        log.warning(
            "release %s: routing table holds weight %s and shadow %s, state says %s and %s: "
            "repairing",
            release.name,
            None if table is None else table.canary_weight,
            None if table is None or table.shadow is None else table.shadow.upstream,
            release.canary_weight,
            None if shadow is None else shadow.upstream,
        )
        try:
            self._write_weight(policy, release.canary_weight, shadow, now)
        except RETRIED as error:
            report.action_errors.append(f"{release.name}: {error}")

    def _abort_orphan(self, release: ReleaseState, now: float, report: TickReport) -> None:
        """A running release whose policy file is gone: the canary gets no more traffic."""
        aborted = replace(
            release,
            phase=Phase.ABORTED,
            canary_weight=0.0,
            updated_at=now,
            reason="policy removed",
        )
        self.state.decide(
            aborted,
            at=now,
            decision="abort",
            actor="controller",
            reason="its policy file was removed",
            evidence={},
            actions=[],
        )
        report.decisions.append((release.name, "abort"))
        self.events.record(
            release.name,
            "Aborted",
            "aborted by controller: its policy file was removed",
            warning=True,
        )
        table = self.routing.read(release.name)
        if table is not None and (table.canary_weight != 0.0 or table.shadow is not None):
            try:
                self.routing.write(
                    table.model_copy(
                        update={"canary_weight": 0.0, "shadow": None, "reason": "policy removed"}
                    ),
                    table.version,
                )
            except VersionConflictError as error:
                report.action_errors.append(f"{release.name}: {error}")
        self.live.pop(release.name, None)

    # -- manual actions ------------------------------------------------------------------

    def manual(
        self, name: str, action: str, *, actor: str, now: float, reason: str = ""
    ) -> ReleaseState:
        """promote, rollback, pause, resume or abort a release by hand."""
        with self.lock:
            try:
                self.fence()
            except NotLeaderError as error:
                raise NotLeaderError(
                    f"cannot {action} release {name!r} here: {error}", error.leader
                ) from None
            policy = self.policies().get(name)
            release = self.state.release(name)
            if policy is None or release is None:
                raise ManualActionError(f"no release named {name!r}")
            why = reason or f"{action} by {actor}"
            grounds = _Grounds(actor, why)
            report = TickReport()
            running = release.phase in (Phase.CANARY, Phase.PAUSED)
            if action == "promote" and running:
                self._promote(release, policy, grounds, now=now, report=report)
            elif action == "rollback" and (running or release.phase is Phase.PROMOTED):
                self._rollback(release, policy, grounds, now=now, report=report)
            elif action == "pause" and release.phase is Phase.CANARY:
                self._pause(release, policy, grounds, now=now, report=report)
            elif action == "resume" and release.phase is Phase.PAUSED:
                resumed = replace(
                    release,
                    phase=release.resume_phase or Phase.CANARY,
                    resume_phase=None,
                    updated_at=now,
                    reason=why,
                )
                self._decide(resumed, policy, "resume", grounds, [], now=now, report=report)
                live = self.live.get(name)
                if live is not None:
                    live.next_look = now
            elif action == "abort" and release.phase not in FINISHED:
                aborted = replace(
                    release, phase=Phase.ABORTED, canary_weight=0.0, updated_at=now, reason=why
                )
                actions = [(ActionKind.SET_WEIGHT, {"weight": 0.0})]
                self._decide(aborted, policy, "abort", grounds, actions, now=now, report=report)
            else:
                raise ManualActionError(
                    f"cannot {action} release {name!r}: it is {release.phase.value}"
                )
            if report.action_errors:
                raise ManualActionIncompleteError("; ".join(report.action_errors))
            return self.state.release(name) or release

    def judgements(self, name: str) -> tuple[Judgement, ...]:
        """The latest judgements of a release, oldest first."""
        return self.histories.get(name, ())

    def last_judgement(self, name: str) -> Judgement | None:
        live = self.live.get(name)
        return None if live is None else live.last


def _describe(action: Action) -> str:
    """An action's intent, for people."""
    intent = action.intent
    if action.kind is ActionKind.SET_WEIGHT:
        return f"canary weight to {float(intent['weight']):g}%"
    return f"label {intent['label']} of prompt {intent['prompt']} to version {intent['version']}"


def _wanted_shadow(policy: Policy, phase: Phase | None) -> ShadowRoute | None:
    """The mirroring a release's routing table carries: its policy's until the rollout
    ends (promoted, rolled back, aborted), then none."""
    return None if phase in FINISHED else shadow_route(policy)


def _move_label(prompt: str, label: str, version: int) -> tuple[ActionKind, dict[str, Any]]:
    """The journalled intent of moving one prompt label onto a version."""
    return ActionKind.MOVE_LABEL, {"prompt": prompt, "label": label, "version": version}


def _trace(sample: TraceSample) -> Trace:
    return Trace(
        trace_id=sample.trace_id,
        arm=sample.arm,
        ts=sample.ts,
        error=sample.error,
        latency_ms=sample.latency_ms,
        cost_usd=sample.cost_usd,
    )


def _first_cursors(running: Mapping[str, Policy], state: ControllerState, now: float) -> Cursors:
    starts = [
        release.started_at
        for name in running
        if (release := state.release(name)) is not None and release.started_at is not None
    ]
    start = min(starts, default=now)
    return Cursors(observations_from=start, scores_from=start)
