"""The control loop: poll, judge, act, reconcile, one ``tick(now)`` at a time.

``tick`` is steppable: tests drive it with a fake clock, the scheduler only calls it.
Each tick polls the source once for every release, stores what it read with the source's
cursors, feeds the judge's evidence, then for every release: finishes journalled actions
left pending (by a crash or a temporary error), starts pending releases whose candidate
exists, judges running ones when their interval is due, and carries out what the judge
decided. Every decision is logged with its evidence and its actions journalled in the
same transaction, before anything is done; every action is idempotent and verified.

Memory and the state file stay flat while a release runs: the evidence drops what no
score can change any more (``controller.judge.evidence``), the judgements kept for the
dashboard are a compact ring, and every ``CHECKPOINT_EVERY`` seconds each running
release's evidence is stored as a checkpoint, so the samples it holds are forgotten
(``ControllerState.save_checkpoint``); a restart resumes from the checkpoint.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from coalmine.shared.errors import PermanentError, TemporaryError
from coalmine.shared.routing_tables.store import RoutingTableStore, VersionConflictError
from controller import actions, lifecycle, score_sample
from controller.cluster.events import EventRecorder, NoopEventRecorder
from controller.errors import (
    LabelPermanentError,
    LabelTemporaryError,
    ManualActionError,
    ManualActionIncompleteError,
    NotLeaderError,
    StaleStateError,
)
from controller.evidence_log import JudgementRing, judgement_summary
from controller.judge import Decision, Evidence, Judgement, StepStatus, Trace, judge
from controller.judge.checkpoint import restore, snapshot
from controller.labels import PromptLabels
from controller.lifecycle import (
    RUNGS,
    Change,
    ReleaseState,
    Sighting,
    Transition,
    Waiting,
    policy_digest,
)
from controller.release_store import ControllerState
from controller.routers import NoopRouter, ProxyTableRouter
from controller.rungs import RungDriver, RungMove
from controller.samples import Cursors, Poll, ScoreSample, TraceSample
from controller.source import SampleSource
from controller.source import review_queue as review
from controller.source.aggregates import ProxyCounts
from controller.source.review_queue import ReviewQueue
from policies.domain import FINISHED, Phase
from policies.model import OnApprovalTimeout, Policy, RoutingProvider

log = logging.getLogger("coalmine.controller")

SOURCE = "langfuse"
JUDGEMENTS_KEPT = 1440
"""Judgements kept per release for the dashboard's charts (a day at one a minute), in a
compact ring (``controller.evidence_log.JudgementRing``): a few hundred bytes each."""
REVIEWS_READ_EVERY = 30.0
"""Seconds between two reads of a rollout's reviews in its annotation queue (a look may
come every second; a review waits for a person anyway)."""
JUDGED = frozenset({Phase.CANARY, Phase.APPROVAL})
"""Phases in which the judge looks at a rollout (waiting for approval, only for harm)."""
HELD_WHILE_BLIND = frozenset({Decision.ADVANCE, Decision.PROMOTE})
"""Decisions never taken on a tick whose poll of Langfuse failed, or that has not read
Langfuse up to now (a new leader reading a release's history again)."""
CAUGHT_UP_WITHIN = 60.0
"""A poll whose cursors stop further than this before now is still catching up."""
SIZED_ON_MINUTES = 5
"""A release's score sample is sized on the busiest of its last whole minutes."""
READ_SPAN_FLOOR = 10.0
"""Seconds past its cursors that a poll reads at least, however often polls were cut."""
PRUNE_EVERY = 3600.0
"""Seconds between two clean-ups of stored samples."""
CHECKPOINT_EVERY = 600.0
"""Seconds between two checkpoints of a running release's evidence: the samples stored
before one are forgotten, but for those a poll may read again."""
READ_AGAIN = 600.0
"""Seconds before the read cursors (beyond the longest ``routing.readTimeout``) whose
stored traces a checkpoint keeps: more than a poll reads again before its cursor (the
source's lookback: ``readTimeout`` plus a minute and the settle time, at least 2
minutes), so a trace read again is known, not taken for a new one."""
EVENT_REASONS = {
    "start": "Started",
    "advance": "Advanced",
    "promote": "Promoted",
    "rollback": "RolledBack",
    "pause": "Paused",
    "resume": "Resumed",
    "abort": "Aborted",
    "await_approval": "AwaitingApproval",
    "approve": "Approved",
    "pass_rung": "RungPassed",
}
"""The Kubernetes Event reason of each decision."""
WARNINGS = frozenset({"rollback", "pause", "abort"})

Notify = Callable[[str, ReleaseState, str], None]
"""Called with (event, release, reason) on the decisions in ``NOTIFIED``."""
NOTIFIED = frozenset({"promote", "rollback", "pause", "await_approval", "approve"})
"""Decisions told to the notifiers: those a person acts on or wants to know of."""


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
    proxies: frozenset[str] = frozenset()
    """The proxies whose counts of the release were read last (traffic from proxies)."""


@dataclass(frozen=True, slots=True)
class ProxyTraffic:
    """Judge traffic on the proxies' counts of every request."""

    counts: ProxyCounts
    sample_budget: float | None = None
    """Langfuse requests a minute for score reads by trace, which the score samples are
    sized to (None: the sample holds every request)."""


@dataclass(slots=True)
class TickReport:
    """What one tick did."""

    polled: bool = False
    poll_error: str | None = None
    new_traces: int = 0
    new_scores: int = 0
    catching_up: str | None = None
    """Why the poll has not read up to now (None: it has)."""
    counts_error: str | None = None
    """Why the proxies' counts could not be read (None: they were, or are not used)."""
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
        from_proxies: ProxyTraffic | None = None,
    ) -> None:
        self.state = state
        self.counts = None if from_proxies is None else from_proxies.counts
        """The proxies' counts of every request: with them, new rollouts are judged on
        all traffic for errors, latency and the split (``traffic_from_proxy``)."""
        self.sample_budget = None if from_proxies is None else from_proxies.sample_budget
        """Langfuse requests a minute for reading scores by trace: each running release's
        score sample is sized to its share of them (``controller.score_sample``); None:
        every request is in the sample."""
        self._sized: dict[str, int] = {}  # release -> minute its sample was last sized
        self.fence: Callable[[], None] = lambda: None
        """Raises NotLeaderError, naming the leader, when this replica may not act
        (cluster mode: it does not hold the Lease)."""
        self.events: EventRecorder = events or NoopEventRecorder()
        self.routing = routing
        self.routers = actions.Routers(
            ProxyTableRouter(routing), {RoutingProvider.NONE: NoopRouter()}
        )
        """Where releases' routes are put in force, by ``routing.provider``."""
        self.route_repairs: dict[str, int] = {}
        """Routes found drifted and put back, by release (since this process started)."""
        self.source = source
        self.labels = labels
        self.policies = policies
        self.notify = notify
        self.rungs = RungDriver(state)
        """The rungs before the canary steps (``rungs.datasets`` runs the dataset rungs)."""
        self._rung_checked: dict[str, float] = {}
        self.reviews: ReviewQueue | None = None
        """Where a policy's ``approval.queue`` is read (None: queue approval is off)."""
        self._reviews_due: dict[str, float] = {}
        self.lock = threading.RLock()
        self.live: dict[str, _Live] = {}
        self.histories: dict[str, JudgementRing] = {}
        """The latest judgements per release, kept after it ends (rings are thread-safe:
        the admin API's threads read them without the controller's lock)."""
        self._next_prune = 0.0
        self._next_checkpoint = 0.0
        self._scores_complete: float | None = None
        """Scores have been read completely for traces due before this (None: up to the
        scores cursor), as the last poll with scores read by trace said."""
        self._read_span: float | None = None
        """Seconds past the cursors the next poll reads (None: up to now); halved after
        a poll cut short, doubled after a complete one (see ``_poll``)."""
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
            if self.sample_budget is not None:
                self._size_samples(policies, now, report)
            if now >= self._next_checkpoint:
                self._checkpoint(policies, now)
            if now >= self._next_prune:
                self._prune(policies, now)
            return report

    def _checkpoint(self, policies: Mapping[str, Policy], now: float) -> None:
        """Store the evidence of every running release and forget the samples it holds."""
        self._next_checkpoint = now + CHECKPOINT_EVERY
        cursors = self.state.cursors(SOURCE)
        if cursors is None:
            return
        longest = max((policy.routing.read_timeout for policy in policies.values()), default=0.0)
        read_from = min(cursors.observations_from, cursors.scores_from)
        keep_from = read_from - longest - READ_AGAIN
        deleted = 0
        for name, live in list(self.live.items()):
            release = self.state.release(name)
            if release is None or not release.running or release.started_at != live.started_at:
                continue
            deleted += self.state.save_checkpoint(
                name,
                started_at=live.started_at,
                at=now,
                document=snapshot(live.evidence),
                keep_from=keep_from,
            )
        if deleted:
            log.info("checkpointed running releases; forgot %d stored samples", deleted)

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
            if (release := self.state.release(name)) is not None and release.running
        }
        if not running:
            return
        cursors = self.state.cursors(SOURCE) or _first_cursors(running, self.state, now)
        read_from = cursors.observations_from
        if self._scores_complete is None:
            # with scores read by trace the scores cursor waits for pending reads by design
            read_from = min(read_from, cursors.scores_from)
        upto = now if self._read_span is None else min(now, read_from + self._read_span)
        # Pages come newest first: a poll cut short keeps the cursors where they were.
        # The source goes on with its read at the next poll when it can (``goes_on``);
        # when it cannot, the same window would be read again from its newest rows, so
        # the next poll reads a shorter window past the cursors (its "now" earlier),
        # until one completes and the cursors move on to it.
        poll = self.source.poll(running, cursors, upto)
        self._pace(poll, upto - read_from, upto >= now)
        report.polled = True
        if poll.ok:
            self.last_poll_ok = now
            self.last_poll_error = None
            self._scores_complete = poll.scores_complete_until
            scores_until = self._scores_complete
            if scores_until is None:
                scores_until = poll.cursors.scores_from
            behind = now - min(poll.cursors.observations_from, scores_until)
            if behind > CAUGHT_UP_WITHIN:
                report.catching_up = f"Langfuse read up to {behind:.0f}s before now"
        else:
            report.poll_error = poll.error
            self.last_poll_error = poll.error
            log.warning("poll failed: %s", poll.error)
            if not (poll.traces or poll.scores):
                return
        # what an incomplete poll read completely is kept (its cursors stay where they
        # were, so the next poll reads the rest); advance and promote stay held on it
        traces, scores = self.state.store_poll(SOURCE, poll.cursors, poll.traces, poll.scores)
        report.new_traces, report.new_scores = len(traces), len(scores)
        self._feed(traces, scores)

    def _pace(self, poll: Poll, span: float, to_now: bool) -> None:
        """How far past its cursors the next poll reads, after one that read ``span``."""
        if poll.ok:
            if self._read_span is not None:
                self._read_span = None if to_now else 2 * self._read_span
        elif poll.requests and not poll.goes_on:
            # cut short after reading, and the same window would be read again from its
            # newest page: a shorter one can be read whole
            self._read_span = max(READ_SPAN_FLOOR, span / 2)

    def _feed(self, traces: list[TraceSample], scores: list[ScoreSample]) -> None:
        """Give new samples to the evidence of running releases."""
        by_trace: dict[str, str] = {}
        for trace in traces:
            if self.rungs.wants(trace.release):
                self.rungs.add_trace(trace)
                by_trace[trace.trace_id] = trace.release
                continue
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
            release = owners.get(score.trace_id) or self._holder(score.trace_id)
            if release is not None:
                self._add_score(release, score)

    def _holder(self, trace_id: str) -> str | None:
        """The release whose evidence holds a trace whose stored sample a checkpoint
        let go."""
        for name, live in self.live.items():
            if live.evidence.holds(trace_id):
                return name
        return None

    def _add_score(self, release: str, score: ScoreSample) -> None:
        self.rungs.add_score(release, score)
        live = self.live.get(release)
        if live is not None:
            live.evidence.add_scores(score.trace_id, {score.name: score.value}, score.at)

    def _known(self, name: str, policy: Policy, now: float) -> ReleaseState:
        """The release as stored, first stored as pending when it is new."""
        digest = policy_digest(policy)
        release = self.state.release(name)
        if release is None:
            release = lifecycle.pending(name, digest, now=now)
            self.state.save_release(release)
        elif release.phase is Phase.PENDING and release.policy_digest != digest:
            release = replace(release, policy_digest=digest, updated_at=now)
            self.state.save_release(release)
        return release

    def _step(self, name: str, policy: Policy, now: float, report: TickReport) -> None:
        release = self._known(name, policy, now)
        self._run_pending_actions(name, policy, now, report)
        release = self.state.release(name) or release
        if not release.running:
            if release.phase in FINISHED:
                self.live.pop(name, None)
                self.rungs.leave(name)
                self._reconcile_weight(release, policy, report)
            self._maybe_start(release, policy, now, report)
            return
        judged, problem = lifecycle.judged_by(release, policy)
        if problem is not None:
            report.action_errors.append(f"{name}: {problem}")
            log.error("release %s: %s", name, problem)
        if not release.step_starts:  # at a rung before the canary steps, or paused at one
            self._reconcile_weight(release, policy, report)
            self._at_rung(release, policy, judged, now, report)
            return
        self.rungs.leave(name)
        live = self._live(release, judged)
        self._reconcile_weight(release, policy, report)
        if release.phase not in JUDGED or now < live.next_look:
            return
        if self._ended_before_look(release, policy, judged, now, report):
            self._after(name, policy, now, report)
            return
        self._bring_up_to(now, release.name, live, report)
        step = StepStatus(
            release.step,
            release.step_started_at or now,
            awaiting_approval=release.phase is Phase.APPROVAL,
        )
        judgement = judge(judged, live.evidence, step, now)
        live.last = judgement
        self._remember(release.name, judgement)
        live.next_look = now + judged.analysis.interval
        if judgement.decision is Decision.CONTINUE:
            return
        blind = report.poll_error or report.catching_up or report.counts_error
        if blind is not None and judgement.decision in HELD_WHILE_BLIND:
            # evidence read before Langfuse failed, or not read up to now, may be stale or
            # partial: never move forward on it
            log.warning(
                "release %s: %s held: evidence not read up to now (%s)",
                release.name,
                judgement.decision.value,
                blind,
            )
            return
        self._carry_out(release, judged, judgement, now, report)
        self._after(name, policy, now, report)

    def _at_rung(
        self,
        release: ReleaseState,
        policy: Policy,
        judged: Policy,
        now: float,
        report: TickReport,
    ) -> None:
        """A rollout at the dataset or shadow rung: what the rung says, carried out."""
        name = release.name
        if release.phase not in RUNGS:  # paused at a rung: nothing runs until it resumes
            self.rungs.leave(name)
            return
        if now >= self._rung_checked.get(name, -math.inf):
            self._rung_checked[name] = now + judged.analysis.interval
            if self._superseded(release, policy, now, report):
                self.rungs.leave(name)
                self._after(name, policy, now, report)
                return
        counted = self.rungs.attempt_to_start(release, judged, now)
        if counted is not None:
            self.state.save_release(counted)
            release = counted
        verdict = self.rungs.look(release, judged, now, read_until=self._read_until())
        if verdict is None:
            return
        if verdict.move is RungMove.PASS:
            change = lifecycle.pass_rung(release, judged, now=now, reason=verdict.reason)
        elif verdict.move is RungMove.ROLLBACK:
            change = lifecycle.rollback(release, judged, now=now, reason=verdict.reason)
        else:
            change = lifecycle.pause(release, now=now, reason=verdict.reason)
        if change.release.phase is not release.phase:
            self.rungs.leave(name)
        grounds = _Grounds("controller", verdict.reason, verdict.evidence)
        self._decide(change, judged, grounds, now=now, report=report)
        self._after(name, policy, now, report)

    def _bring_up_to(self, now: float, name: str, live: _Live, report: TickReport) -> None:
        """Make the release's evidence current for a look at ``now``."""
        if live.evidence.traffic_from_proxy:
            self._take_counts(name, live, now, report)
        scores, traces = self._read_until()
        live.evidence.advance(
            max(now, live.evidence.observed_until),
            scores_read_until=scores,
            traces_read_until=traces,
        )

    def _read_until(self) -> tuple[float | None, float | None]:
        """Until when scores and traces have been read completely (None: not known)."""
        cursors = self.state.cursors(SOURCE)
        if cursors is None:
            return self._scores_complete, None
        scores = self._scores_complete
        return (cursors.scores_from if scores is None else scores), cursors.observations_from

    def _take_counts(self, name: str, live: _Live, now: float, report: TickReport) -> None:
        """Give the release's evidence the proxies' counts read now."""
        if self.counts is None:
            report.counts_error = "this controller does not read the proxies' counts"
            return
        evidence = live.evidence
        try:
            readout = self.counts.readout(name, evidence.counts_from(), math.floor(now) + 1)
        except Exception as error:  # the store's trouble never stops the tick
            live.proxies = frozenset()  # none seen counting: so the metric and its alert say
            report.counts_error = f"cannot read the proxies' counts: {error}"
            report.action_errors.append(f"{name}: {report.counts_error}")
            log.warning("release %s: %s", name, report.counts_error)
            return
        for problem in readout.problems:
            log.warning("release %s: proxy counts left out: %s", name, problem)
        live.proxies = readout.proxies
        for (arm, minute), cell in sorted(readout.cells.items(), key=lambda item: item[0][1]):
            evidence.add_proxy_minute(
                arm, minute, (cell.requests, cell.errors, cell.sampled), cell.latency_bins
            )

    def _size_samples(self, policies: Mapping[str, Policy], now: float, report: TickReport) -> None:
        """Once a minute, keep every release's score sample within its share of the
        request budget, from before its rollout starts: a busy release sampled whole
        for a minute would spend the budget on reading that minute for long after."""
        assert self.counts is not None
        minute = math.floor(now / 60) * 60
        active = [
            name
            for name in policies
            if (release := self.state.release(name)) is not None
            and release.phase not in FINISHED
            and self._sized.get(name) != minute
        ]
        if not active:
            return
        names = {m.score for p in policies.values() for m in p.analysis.metrics if m.score}
        releases = sum(
            1
            for name in policies
            if (release := self.state.release(name)) is not None and release.phase not in FINISHED
        )
        for name in active:
            try:
                cells = self.counts.read(name, minute - SIZED_ON_MINUTES * 60, minute)
            except Exception as error:  # sized again at the next minute
                report.action_errors.append(f"{name}: cannot read the proxies' counts: {error}")
                continue
            per_minute: dict[int, int] = {}
            for (_, start), cell in cells.items():
                per_minute[start] = per_minute.get(start, 0) + cell.requests
            traffic = max(per_minute.values(), default=0)
            if self._size_sample(name, traffic, (releases, len(names)), now, report):
                self._sized[name] = minute

    def _size_sample(
        self,
        name: str,
        traffic: int,
        sharing: tuple[int, int],
        now: float,
        report: TickReport,
    ) -> bool:
        """Keep the release's score sample within its share of the request budget
        (``sharing``: the releases sharing the budget, the score names read); False when
        it has no routing table yet or it changed meanwhile (sized again next tick)."""
        assert self.sample_budget is not None
        affordable = score_sample.affordable_traces(self.sample_budget, *sharing)
        table = self.routing.read(name)
        if table is None:
            return False
        if traffic:
            wanted = score_sample.wanted_rate(traffic, affordable)
        elif table.score_sample:
            return True  # no requests lately: the rate stays as it is
        else:
            wanted = 0.0  # a rollout on traffic not known yet: none sampled until it is
        entries = score_sample.next_entries(table.score_sample, wanted, now)
        if entries is None:
            return True
        try:
            self.routing.write(table.model_copy(update={"score_sample": entries}), table.version)
        except VersionConflictError as error:
            report.action_errors.append(f"{name}: {error}")
            return False
        log.info(
            "release %s: score sample %.4g of requests from %s (%d requests in the busiest "
            "of the last minutes, %.0f sampled traces a minute affordable)",
            name,
            wanted,
            entries[-1].from_,
            traffic,
            affordable,
        )
        return True

    def _remember(self, name: str, judgement: Judgement) -> None:
        ring = self.histories.get(name)
        if ring is None:
            ring = self.histories[name] = JudgementRing(JUDGEMENTS_KEPT)
        ring.append(judgement)

    def _after(self, name: str, policy: Policy, now: float, report: TickReport) -> None:
        """Once a rollout has ended, what the release waits for (or its next rollout)."""
        ended = self.state.release(name)
        if ended is not None and ended.phase in FINISHED:
            self._maybe_start(ended, policy, now, report)

    # -- starting ------------------------------------------------------------------------

    def _sighting(self, policy: Policy) -> Sighting:
        """Where the prompt's labels are now (raises the label errors)."""
        prompt = policy.target.prompt
        if prompt is None:
            return Sighting()
        return Sighting(
            stable_version=self.labels.version_of(prompt.name, prompt.stable_label),
            candidate_version=self.labels.version_of(prompt.name, prompt.canary_label),
        )

    def _maybe_start(
        self,
        release: ReleaseState,
        policy: Policy,
        now: float,
        report: TickReport,
        *,
        again: bool = False,
        actor: str = "controller",
    ) -> bool:
        """Start the next rollout when a candidate is there; else record why not."""
        if self.state.pending_actions(release.name):
            return False  # the last rollout's actions come first
        try:
            seen = self._sighting(policy)
        except (LabelTemporaryError, LabelPermanentError) as error:
            report.action_errors.append(f"{release.name}: {error}")
            self._wait(release, f"cannot read the prompt's labels: {error}", now)
            return False
        found = lifecycle.find_candidate(release, policy, seen, again=again)
        if isinstance(found, Waiting):
            self._wait(release, found.reason, now)
            return False
        change = lifecycle.start(release, policy, found, policy_digest(policy), now=now)
        grounds = _Grounds(actor, f"rollout {change.release.rollout}: {found.reason}")
        self._decide(change, policy, grounds, now=now, report=report)
        return True

    def _wait(self, release: ReleaseState, reason: str, now: float) -> None:
        """Record why the release waits (written only when the reason changes)."""
        if release.waiting != reason:
            self.state.save_release(replace(release, waiting=reason, updated_at=now))

    def _superseded(
        self, release: ReleaseState, policy: Policy, now: float, report: TickReport
    ) -> bool:
        """End a rollout whose candidate is no longer the one the target names: its
        evidence would mix two candidates. The next tick starts the new one."""
        try:
            seen = self._sighting(policy)
        except (LabelTemporaryError, LabelPermanentError) as error:
            report.action_errors.append(f"{release.name}: {error}")
            return False
        why = lifecycle.superseded(release, policy, seen)
        if why is None:
            return False
        reason = f"superseded: {why}"
        change = lifecycle.abort(release, now=now, reason=reason)
        self._decide(change, policy, _Grounds("controller", reason), now=now, report=report)
        return True

    def _live(self, release: ReleaseState, policy: Policy) -> _Live:
        live = self.live.get(release.name)
        started_at = release.started_at
        assert started_at is not None
        if live is not None and live.started_at == started_at:
            return live
        evidence = self._resumed(release, policy)
        if evidence is None:
            evidence = Evidence(policy, started_at, traffic_from_proxy=self.counts is not None)
            for index, at in enumerate(release.step_starts[1:], start=1):
                evidence.open_step(index, at)
            for trace in self.state.traces(release.name, started_at):
                evidence.add_trace(_trace(trace))
            for score in self.state.scores_for_release(release.name, started_at):
                evidence.add_scores(score.trace_id, {score.name: score.value}, score.at)
        live = _Live(evidence, started_at, next_look=started_at + policy.analysis.interval)
        self.live[release.name] = live
        return live

    def _resumed(self, release: ReleaseState, policy: Policy) -> Evidence | None:
        """The release's evidence from its checkpoint and the samples stored after it;
        None without a checkpoint of this rollout that fits the policy."""
        started_at = release.started_at
        assert started_at is not None
        found = self.state.checkpoint(release.name)
        if found is None or found.started_at != started_at:
            return None
        try:
            evidence = restore(policy, found.document)
        except (KeyError, IndexError, TypeError, ValueError) as error:
            log.warning(
                "release %s: its evidence checkpoint is malformed (%r)", release.name, error
            )
            return None
        if evidence is None or evidence.step_count > len(release.step_starts):
            log.warning("release %s: its evidence checkpoint does not fit; not used", release.name)
            return None
        for index in range(evidence.step_count, len(release.step_starts)):
            evidence.open_step(index, release.step_starts[index])
        traces = self.state.traces_after(release.name, started_at, found.traces_through)
        for trace in traces:
            evidence.add_trace(_trace(trace))
        new = {trace.trace_id for trace in traces}
        # scores of the new traces (also those stored before the checkpoint, while their
        # trace was not read yet), and later scores of the traces the checkpoint holds
        early = self.state.scores_of(sorted(new))
        later = [s for s in self.state.scores_after(found.scores_through) if s.trace_id not in new]
        for score in sorted([*early, *later], key=lambda score: score.at):
            if evidence.holds(score.trace_id):
                evidence.add_scores(score.trace_id, {score.name: score.value}, score.at)
        return evidence

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
        if decision is Decision.PROMOTE and policy.approval is not None:
            change = lifecycle.await_approval(release, now=now, reason=judgement.reason)
        else:
            change = lifecycle.decided(release, policy, decision, now=now, reason=judgement.reason)
        if change.transition is Transition.ADVANCE:
            self.live[release.name].evidence.open_step(change.release.step, now)
        self._decide(change, policy, grounds, now=now, report=report)
        if change.transition is Transition.AWAIT_APPROVAL:
            self._put_up_for_review(change.release, policy, report)

    def _ended_before_look(
        self,
        release: ReleaseState,
        policy: Policy,
        judged: Policy,
        now: float,
        report: TickReport,
    ) -> bool:
        """Whether the rollout ended without a look: superseded by a newer candidate, out
        of time for approval, or approved or rejected by a reviewer."""
        return (
            self._superseded(release, policy, now, report)
            or self._approval_timed_out(release, judged, now, report)
            or self._reviewed(release, judged, now, report)
        )

    def _put_up_for_review(
        self, release: ReleaseState, policy: Policy, report: TickReport
    ) -> ReleaseState:
        """Add the canary's worst traces and a random sample of the others to the
        policy's review queue, once; the release as it is then."""
        queue = None if policy.approval is None else policy.approval.queue
        live = self.live.get(release.name)
        if queue is None or self.reviews is None or release.review_traces or live is None:
            return release
        worst = [
            trace_id
            for result in (live.last.metrics if live.last is not None else ())
            for trace_id in result.worst_traces
        ]
        chosen = review.choose_traces(
            worst,
            live.evidence.canary_trace_ids(),
            queue.traces,
            f"{release.name}/{release.rollout}",
        )
        if not chosen:
            return release
        try:
            queue_id = self.reviews.queue_id(queue.name)
            self.reviews.add_items(queue_id, chosen)
        except (TemporaryError, PermanentError) as error:
            problem = f"{release.name}: cannot add traces to review queue {queue.name!r}: {error}"
            report.action_errors.append(problem)
            log.warning("release %s", problem)
            return release
        queued = replace(release, review_queue=queue_id, review_traces=tuple(chosen))
        self.state.save_release(queued)
        log.info(
            "release %s: %d canary traces added to review queue %r",
            release.name,
            len(chosen),
            queue.name,
        )
        return queued

    def _reviewed(
        self, release: ReleaseState, policy: Policy, now: float, report: TickReport
    ) -> bool:
        """A rollout waiting for approval that a reviewer approved or rejected in the
        policy's review queue: promoted or rolled back (a reject wins)."""
        queue = None if policy.approval is None else policy.approval.queue
        if release.phase is not Phase.APPROVAL or queue is None or self.reviews is None:
            return False
        if now < self._reviews_due.get(release.name, 0.0):
            return False
        self._reviews_due[release.name] = now + REVIEWS_READ_EVERY
        release = self._put_up_for_review(release, policy, report)
        if release.review_queue is None or release.approval_since is None:
            return False
        try:
            found = self.reviews.verdicts(
                release.review_queue,
                queue.score_config_id,
                release.review_traces,
                release.approval_since,
                approve=queue.approve_values,
                reject=queue.reject_values,
            )
        except (TemporaryError, PermanentError) as error:
            problem = f"{release.name}: cannot read review queue {queue.name!r}: {error}"
            report.action_errors.append(problem)
            log.warning("release %s", problem)
            return False
        rejects = [r for r in found.reviews if r.verdict is review.Verdict.REJECT]
        approvals = [r for r in found.reviews if r.verdict is review.Verdict.APPROVE]
        decisive = rejects or approvals
        if not decisive:
            return False
        first = decisive[0]
        actor = f"langfuse-review ({first.author})"
        if rejects:
            reason = f"rejected in review queue {queue.name!r} (trace {first.trace_id})"
            change = self._rollback(release, policy, now=now, reason=reason)
        else:
            reason = f"approved in review queue {queue.name!r} (trace {first.trace_id})"
            change = lifecycle.approve(release, policy, now=now, reason=reason)
        self._decide(change, policy, _Grounds(actor, reason), now=now, report=report)
        return True

    def _approval_timed_out(
        self, release: ReleaseState, policy: Policy, now: float, report: TickReport
    ) -> bool:
        """A rollout that waited too long for approval: paused or rolled back, as its
        policy says."""
        reason = lifecycle.approval_timed_out(release, policy, now)
        if reason is None or policy.approval is None:
            return False
        if policy.approval.on_timeout is OnApprovalTimeout.ROLLBACK:
            change = self._rollback(release, policy, now=now, reason=reason)
        else:
            change = lifecycle.pause(release, now=now, reason=reason)
        self._decide(change, policy, _Grounds("controller", reason), now=now, report=report)
        return True

    def _rollback(
        self, release: ReleaseState, policy: Policy, *, now: float, reason: str
    ) -> Change:
        before = None
        prompt = policy.target.prompt
        if prompt is not None and release.phase is Phase.PROMOTED:
            before = self._version_before_promotion(release, prompt.name)
        return lifecycle.rollback(
            release, policy, now=now, reason=reason, stable_before_promotion=before
        )

    def _version_before_promotion(self, release: ReleaseState, prompt: str) -> int | None:
        """Where the stable label was before this rollout moved it (label history)."""
        for move in reversed(self.state.label_moves(release.name)):
            promoted_here = (
                move.prompt == prompt
                and move.to_version == release.candidate_version
                and move.rollout in (0, release.rollout)
                and move.from_version is not None
            )
            if promoted_here:
                return move.from_version
        return None

    def _decide(
        self,
        change: Change,
        policy: Policy,
        grounds: _Grounds,
        *,
        now: float,
        report: TickReport,
    ) -> None:
        """Log the decision with the release's new state and journal its actions (one
        transaction), then carry the actions out and tell whoever listens."""
        release, decision = change.release, change.transition.value
        actor, reason = grounds.actor, grounds.reason
        self.state.decide(
            release,
            at=now,
            decision=decision,
            actor=actor,
            reason=reason,
            evidence=grounds.evidence,
            actions=[act.intent() for act in change.actions],
        )
        report.decisions.append((release.name, decision))
        log.info(
            "release %s rollout %d: %s by %s: %s",
            release.name,
            release.rollout,
            decision,
            actor,
            reason,
        )
        self.events.record(
            release.name,
            EVENT_REASONS.get(decision, decision.title()),
            f"rollout {release.rollout}: {decision} by {actor}: {reason}",
            warning=decision in WARNINGS,
        )
        self._run_pending_actions(release.name, policy, now, report)
        if self.notify is not None and decision in NOTIFIED:
            self.notify(decision, release, reason)

    def _plant(self) -> actions.Plant:
        return actions.Plant(
            self.state, self.routers, self.labels, self.events, repairs=self.route_repairs
        )

    def _run_pending_actions(
        self, name: str, policy: Policy, now: float, report: TickReport
    ) -> None:
        carried = actions.run_pending(self._plant(), name, policy, now)
        report.actions += carried.done
        report.action_errors.extend(carried.errors)

    def _reconcile_weight(self, release: ReleaseState, policy: Policy, report: TickReport) -> None:
        error = actions.reconcile(self._plant(), release, policy)
        if error is not None:
            report.action_errors.append(error)

    def _abort_orphan(self, release: ReleaseState, now: float, report: TickReport) -> None:
        """A running release whose policy file is gone: the canary gets no more traffic.
        (No policy, so no journalled weight action: the table is written here.)"""
        reason = "its policy file was removed"
        aborted = lifecycle.abort(release, now=now, reason=reason).release
        self.state.decide(
            aborted,
            at=now,
            decision=Transition.ABORT.value,
            actor="controller",
            reason=reason,
            evidence={},
            actions=[],
        )
        report.decisions.append((release.name, Transition.ABORT.value))
        self.events.record(
            release.name,
            "Aborted",
            f"rollout {release.rollout}: abort by controller: {reason}",
            warning=True,
        )
        error = actions.unroute(self._plant(), release.name, _ran_by(release), "policy removed")
        if error is not None:
            report.action_errors.append(error)
        self.live.pop(release.name, None)

    # -- manual actions ------------------------------------------------------------------

    def manual(
        self, name: str, action: str, *, actor: str, now: float, reason: str = ""
    ) -> ReleaseState:
        """promote, rollback, pause, resume, abort a release's rollout by hand, or start
        its next rollout."""
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
            try:
                transition = Transition(action)
            except ValueError:
                raise ManualActionError(f"unknown action {action!r}") from None
            refused = lifecycle.refusal(release, transition)
            if refused is not None:
                raise ManualActionError(refused)
            why = reason or f"{action} by {actor}"
            report = TickReport()
            if transition is Transition.START:
                if not self._maybe_start(release, policy, now, report, again=True, actor=actor):
                    waiting = self.state.release(name) or release
                    raise ManualActionError(
                        f"cannot start release {name!r}: {waiting.waiting or 'no candidate'}"
                    )
            else:
                judged, _ = lifecycle.judged_by(release, policy)
                change = self._manual_change(release, judged, transition, now=now, reason=why)
                self._decide(change, policy, _Grounds(actor, why), now=now, report=report)
                live = self.live.get(name)
                if transition is Transition.RESUME and live is not None:
                    live.next_look = now
            if report.action_errors:
                raise ManualActionIncompleteError("; ".join(report.action_errors))
            return self.state.release(name) or release

    def _manual_change(
        self,
        release: ReleaseState,
        policy: Policy,
        transition: Transition,
        *,
        now: float,
        reason: str,
    ) -> Change:
        if transition is Transition.PROMOTE:
            return lifecycle.promote(release, policy, now=now, reason=reason)
        if transition is Transition.APPROVE:
            return lifecycle.approve(release, policy, now=now, reason=reason)
        if transition is Transition.ROLLBACK:
            return self._rollback(release, policy, now=now, reason=reason)
        if transition is Transition.PAUSE:
            return lifecycle.pause(release, now=now, reason=reason)
        if transition is Transition.RESUME:
            return lifecycle.resume(release, now=now, reason=reason)
        return lifecycle.abort(release, now=now, reason=reason)

    def judgements(self, name: str) -> tuple[Judgement, ...]:
        """The latest judgements of a release, oldest first (all but the newest without
        reasons, guards and worst traces: see ``JudgementRing``)."""
        ring = self.histories.get(name)
        return () if ring is None else ring.judgements()

    def traffic_of(self, name: str) -> dict[str, Any] | None:
        """Where the running release's traffic is counted and how its scores are sampled,
        for status; None when no rollout of it is judged in this process."""
        live = self.live.get(name)
        if live is None:
            return None
        evidence = live.evidence
        view: dict[str, Any] = {"countedBy": "langfuse"}
        if evidence.traffic_from_proxy:
            view = {
                "countedBy": "proxies",
                "proxies": sorted(live.proxies),
                "lateRequests": evidence.late_requests,
                "tracesBeyondRequests": evidence.surplus_traces,
                "lossComparedUntil": evidence.loss_checked_until,
            }
        try:
            table = self.routing.read(name)
        except Exception:  # a table that cannot be read is the routing repair's to report
            table = None
        if table is not None:
            view["scoreSample"] = [
                {"from": entry.from_, "rate": entry.rate} for entry in table.score_sample
            ]
        return view

    def last_judgement(self, name: str) -> Judgement | None:
        live = self.live.get(name)
        return None if live is None else live.last


def _trace(sample: TraceSample) -> Trace:
    return Trace(
        trace_id=sample.trace_id,
        arm=sample.arm,
        ts=sample.ts,
        error=sample.error,
        latency_ms=sample.latency_ms,
        cost_usd=sample.cost_usd,
    )


def _ran_by(release: ReleaseState) -> Policy | None:
    """The policy the release's last rollout ran by (None: none, or it no longer loads)."""
    if not release.rollout_policy:
        return None
    try:
        return Policy.model_validate_json(release.rollout_policy)
    except ValueError:
        return None


def _first_cursors(running: Mapping[str, Policy], state: ControllerState, now: float) -> Cursors:
    starts = [
        release.judged_since
        for name in running
        if (release := state.release(name)) is not None and release.judged_since is not None
    ]
    start = min(starts, default=now)
    return Cursors(observations_from=start, scores_from=start)
