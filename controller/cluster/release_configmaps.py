"""The controller's state in Kubernetes: a ConfigMap per release, shared by every replica.

``<prefix>-<release>-state`` holds the release's phase and step (``release.json``), its
decision log (``decisions.json``), its action journal (``actions.json``) and the label
history coalmine keeps for it (``labelMoves.json``); ``<prefix>-index`` names every
release that has one, so a new leader finds releases whose policy file is gone.

Every change is one replace of one ConfigMap at the ``resourceVersion`` it was read at:
a 409 means another writer came first, and the change is applied again to what is stored
now, except a decision, which is refused (StaleStateError) when the release it was
decided on has changed meanwhile: a deposed leader never repeats a decision its
successor already took. The log is bounded: past ``DECISIONS_KEPT`` entries (or the
ConfigMap's size budget) the oldest are folded into a summary that keeps their counts.

Samples and Langfuse cursors stay in the local SQLite cache of the base class: a new
leader with an empty cache reads the running releases' traces again from their start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from coalmine.shared.kube.client import (
    KubeConflictError,
    KubeNotFoundError,
    KubeTemporaryError,
    kube_call,
)
from coalmine.shared.kube.objects import configmap_body, index_name, state_name
from controller.errors import StaleStateError
from controller.lifecycle import ActionKind, ReleaseState
from controller.release_store import (
    Action,
    ActionStatus,
    ControllerState,
    DecisionRecord,
    LabelMove,
)
from policies.domain import Phase

log = logging.getLogger("coalmine.controller")

T = TypeVar("T")

DECISIONS_KEPT = 200
"""Decisions kept in full per release; older ones are counted in the summary."""
EVIDENCE_KEPT = 50
"""The newest decisions keep their evidence; older kept entries keep the rest."""
FINISHED_ACTIONS_KEPT = 100
"""Finished actions kept per release (pending ones are always kept)."""
LABEL_MOVES_KEPT = 200
SIZE_BUDGET = 768 * 1024
"""Bytes of data a state ConfigMap may hold (the API server refuses more than 1 MiB)."""
WRITE_ATTEMPTS = 8
CACHE_SECONDS = 1.0
"""Reads younger than this are served from memory."""


@dataclass
class _Document:
    """The parsed data of one release's state ConfigMap."""

    release: dict[str, Any] | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)
    folded: dict[str, Any] = field(default_factory=dict)
    """Decisions no longer kept: ``count``, ``byDecision``, ``firstAt``, ``lastAt``."""
    next_decision: int = 1
    actions: list[dict[str, Any]] = field(default_factory=list)
    folded_actions: dict[str, int] = field(default_factory=dict)
    """Finished actions no longer kept, counted by ``kind/status``."""
    next_action: int = 1
    label_moves: list[dict[str, Any]] = field(default_factory=list)
    folded_moves: int = 0

    @classmethod
    def parse(cls, data: dict[str, str] | None, where: str) -> _Document:
        if not data:
            return cls()
        try:
            release = json.loads(data["release.json"]) if "release.json" in data else None
            decisions = json.loads(data.get("decisions.json", "{}"))
            actions = json.loads(data.get("actions.json", "{}"))
            moves = json.loads(data.get("labelMoves.json", "{}"))
            return cls(
                release=release,
                decisions=list(decisions.get("entries", [])),
                folded=dict(decisions.get("folded", {})),
                next_decision=int(decisions.get("nextId", 1)),
                actions=list(actions.get("entries", [])),
                folded_actions={str(k): int(v) for k, v in actions.get("folded", {}).items()},
                next_action=int(actions.get("nextId", 1)),
                label_moves=list(moves.get("entries", [])),
                folded_moves=int(moves.get("folded", 0)),
            )
        except (ValueError, TypeError, AttributeError, KeyError) as error:
            raise ValueError(f"{where}: not a coalmine state document: {error}") from None

    def render(self) -> dict[str, str]:
        self._bound()
        data = self._encode()
        while _size(data) > SIZE_BUDGET and self._shed():
            data = self._encode()
        return data

    def _encode(self) -> dict[str, str]:
        data = {
            "decisions.json": _dumps(
                {"nextId": self.next_decision, "folded": self.folded, "entries": self.decisions}
            ),
            "actions.json": _dumps(
                {"nextId": self.next_action, "folded": self.folded_actions, "entries": self.actions}
            ),
            "labelMoves.json": _dumps({"folded": self.folded_moves, "entries": self.label_moves}),
        }
        if self.release is not None:
            data["release.json"] = _dumps(self.release)
        return data

    def _bound(self) -> None:
        while len(self.decisions) > DECISIONS_KEPT:
            self._fold_oldest_decision()
        for entry in self.decisions[:-EVIDENCE_KEPT]:
            if entry.get("evidence"):
                entry["evidence"] = {}
                entry["evidenceDropped"] = True
        finished = [a for a in self.actions if a["status"] != ActionStatus.PENDING.value]
        for action in finished[: max(0, len(finished) - FINISHED_ACTIONS_KEPT)]:
            self._fold_action(action)
        if len(self.label_moves) > LABEL_MOVES_KEPT:
            excess = len(self.label_moves) - LABEL_MOVES_KEPT
            self.folded_moves += excess
            del self.label_moves[:excess]

    def _shed(self) -> bool:
        """Make the document smaller by one step; False when nothing is left to shed."""
        with_evidence = [entry for entry in self.decisions if entry.get("evidence")]
        if len(with_evidence) > 1:
            with_evidence[0]["evidence"] = {}
            with_evidence[0]["evidenceDropped"] = True
            return True
        if len(self.decisions) > 1:
            self._fold_oldest_decision()
            return True
        finished = [a for a in self.actions if a["status"] != ActionStatus.PENDING.value]
        if finished:
            self._fold_action(finished[0])
            return True
        return False

    def _fold_oldest_decision(self) -> None:
        oldest = self.decisions.pop(0)
        by_decision = self.folded.setdefault("byDecision", {})
        by_decision[oldest["decision"]] = by_decision.get(oldest["decision"], 0) + 1
        self.folded["count"] = self.folded.get("count", 0) + 1
        self.folded.setdefault("firstAt", oldest["at"])
        self.folded["lastAt"] = oldest["at"]

    def _fold_action(self, action: dict[str, Any]) -> None:
        self.actions.remove(action)
        key = f"{action['kind']}/{action['status']}"
        self.folded_actions[key] = self.folded_actions.get(key, 0) + 1

    def action(self, action_id: int) -> dict[str, Any]:
        for entry in self.actions:
            if entry["id"] == action_id:
                return entry
        raise KeyError(action_id)


@dataclass(frozen=True, slots=True)
class _Read:
    at: float
    resource_version: str | None
    """None: the ConfigMap does not exist."""
    data: dict[str, str]


class ClusterState(ControllerState):
    """Releases, decisions, actions and label history in ConfigMaps; samples in the
    local cache file ``cache``."""

    def __init__(
        self,
        cache: Path,
        api_client: Any,
        namespace: str,
        prefix: str,
        *,
        fence: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from kubernetes import client  # noqa: PLC0415

        super().__init__(cache)
        self.namespace = namespace
        self.prefix = prefix
        self.fence = fence
        """Called before every write; raises when this replica may not write (it is not
        the leader)."""
        self._core = client.CoreV1Api(api_client)
        self._clock = clock
        self._reads: dict[str, _Read] = {}
        self._reads_lock = threading.Lock()

    def refresh(self) -> None:
        """Forget what was read: the next reads go to the API server."""
        with self._reads_lock:
            self._reads.clear()

    # -- releases ------------------------------------------------------------------------

    def release(self, name: str) -> ReleaseState | None:
        document = self._document(name)
        if document.release is None:
            return None
        return ReleaseState.from_json(json.dumps(document.release))

    def releases(self) -> list[ReleaseState]:
        found = [self.release(name) for name in self._index()]
        return [release for release in found if release is not None]

    def save_release(self, release: ReleaseState) -> None:
        def put(document: _Document) -> None:
            document.release = json.loads(release.to_json())

        self._update(release.name, put)
        self._add_to_index(release.name)

    def delete_release(self, name: str) -> None:
        self._write_guard()
        with contextlib.suppress(KubeNotFoundError):
            kube_call(
                f"delete {self._where(name)}",
                self._core.delete_namespaced_config_map,
                state_name(self.prefix, name),
                self.namespace,
            )
        with self._reads_lock:
            self._reads.pop(state_name(self.prefix, name), None)
        super().delete_release(name)
        self._change_index(lambda names: names - {name})

    # -- decisions and actions -------------------------------------------------------------

    def decide(
        self,
        release: ReleaseState,
        *,
        at: float,
        decision: str,
        actor: str,
        reason: str,
        evidence: dict[str, Any],
        actions: Sequence[tuple[ActionKind, dict[str, Any]]],
    ) -> int:
        def log_decision(document: _Document) -> int:
            decision_id = document.next_decision
            document.next_decision += 1
            document.decisions.append(
                {
                    "id": decision_id,
                    "at": at,
                    "decision": decision,
                    "actor": actor,
                    "reason": reason,
                    "phase": release.phase.value,
                    "step": release.step,
                    "rollout": release.rollout,
                    "evidence": json.loads(json.dumps(evidence, default=str)),
                }
            )
            document.release = json.loads(release.to_json())
            for kind, intent in actions:
                document.actions.append(
                    {
                        "id": document.next_action,
                        "decisionId": decision_id,
                        "kind": kind.value,
                        "intent": intent,
                        "status": ActionStatus.PENDING.value,
                        "observed": None,
                        "createdAt": at,
                        "finishedAt": None,
                        "error": None,
                    }
                )
                document.next_action += 1
            return decision_id

        decision_id = self._update(release.name, log_decision, decision=True)
        self._add_to_index(release.name)
        return decision_id

    def pending_actions(self, release: str | None = None) -> list[Action]:
        names = [release] if release is not None else self._index()
        return [
            action
            for name in names
            for action in self.actions(name)
            if action.status is ActionStatus.PENDING
        ]

    def actions(self, release: str) -> list[Action]:
        return [_action(release, entry) for entry in self._document(release).actions]

    def observe_action(self, action: Action, observed: dict[str, Any]) -> None:
        def observe(document: _Document) -> None:
            document.action(action.id)["observed"] = observed

        self._update(action.release, observe)

    def finish_action(
        self,
        action: Action,
        *,
        at: float,
        status: ActionStatus = ActionStatus.DONE,
        error: str | None = None,
        label_move: LabelMove | None = None,
    ) -> None:
        def finish(document: _Document) -> None:
            entry = document.action(action.id)
            if entry["status"] != ActionStatus.PENDING.value:
                return  # finished by a write that raced this one: record the move once
            entry.update(status=status.value, finishedAt=at, error=error)
            if label_move is not None:
                document.label_moves.append(
                    {
                        "prompt": label_move.prompt,
                        "label": label_move.label,
                        "from": label_move.from_version,
                        "to": label_move.to_version,
                        "at": label_move.at,
                        "actor": label_move.actor,
                        "reason": label_move.reason,
                        "actionId": action.id,
                        "rollout": label_move.rollout,
                    }
                )

        self._update(action.release, finish)

    def decisions(self, release: str, limit: int | None = None) -> list[DecisionRecord]:
        entries = self._document(release).decisions
        if limit is not None:
            entries = entries[-limit:] if limit > 0 else []
        return [
            DecisionRecord(
                id=int(entry["id"]),
                release=release,
                at=float(entry["at"]),
                decision=str(entry["decision"]),
                actor=str(entry["actor"]),
                reason=str(entry["reason"]),
                phase=Phase(entry["phase"]),
                step=int(entry["step"]),
                evidence=dict(entry.get("evidence") or {}),
                rollout=int(entry.get("rollout", 0)),
            )
            for entry in entries
        ]

    def decision_counts(self, release: str) -> Counter[str]:
        document = self._document(release)
        counts: Counter[str] = Counter(
            {str(k): int(v) for k, v in document.folded.get("byDecision", {}).items()}
        )
        counts.update(str(entry["decision"]) for entry in document.decisions)
        return counts

    def action_counts(self, release: str) -> Counter[tuple[str, str]]:
        document = self._document(release)
        counts: Counter[tuple[str, str]] = Counter()
        for key, count in document.folded_actions.items():
            kind, _, status = key.partition("/")
            counts[(kind, status)] += count
        counts.update((str(a["kind"]), str(a["status"])) for a in document.actions)
        return counts

    def label_moves(self, release: str | None = None) -> list[LabelMove]:
        names = [release] if release is not None else self._index()
        return [
            LabelMove(
                release=name,
                prompt=str(entry["prompt"]),
                label=str(entry["label"]),
                from_version=entry.get("from"),
                to_version=int(entry["to"]),
                at=float(entry["at"]),
                actor=str(entry["actor"]),
                reason=str(entry["reason"]),
                rollout=int(entry.get("rollout", 0)),
            )
            for name in names
            for entry in self._document(name).label_moves
        ]

    # -- the ConfigMaps --------------------------------------------------------------------

    def _document(self, release: str) -> _Document:
        name = state_name(self.prefix, release)
        return _Document.parse(self._read(name).data, self._where(release))

    def _update(
        self, release: str, change: Callable[[_Document], T], *, decision: bool = False
    ) -> T:
        name = state_name(self.prefix, release)
        read = self._read(name)
        based_on = _Document.parse(read.data, self._where(release)).release
        for _ in range(WRITE_ATTEMPTS):
            self._write_guard()
            document = _Document.parse(read.data, self._where(release))
            if decision and document.release != based_on:
                raise StaleStateError(
                    f"release {release}: changed by another writer since it was judged; "
                    "the decision is dropped and will be taken again on fresh state"
                )
            result = change(document)
            body = configmap_body(
                name,
                self.namespace,
                document.render(),
                role="state",
                release=release,
                resource_version=read.resource_version,
            )
            try:
                self._store(name, body, exists=read.resource_version is not None)
                return result
            except KubeConflictError:
                read = self._read(name, fresh=True)
        raise KubeTemporaryError(f"{self._where(release)}: keeps changing under the writer")

    def _index(self) -> list[str]:
        read = self._read(index_name(self.prefix))
        try:
            names = json.loads(read.data.get("releases.json", "[]"))
        except ValueError:
            raise ValueError(
                f"configmap {self.namespace}/{index_name(self.prefix)}: releases.json is not JSON"
            ) from None
        return sorted(str(name) for name in names)

    def _add_to_index(self, release: str) -> None:
        if release not in self._index():
            self._change_index(lambda names: names | {release})

    def _change_index(self, change: Callable[[set[str]], set[str]]) -> None:
        name = index_name(self.prefix)
        read = self._read(name)
        for _ in range(WRITE_ATTEMPTS):
            self._write_guard()
            names = set(json.loads(read.data.get("releases.json", "[]")))
            changed = sorted(change(set(names)))
            if changed == sorted(names) and read.resource_version is not None:
                return
            body = configmap_body(
                name,
                self.namespace,
                {"releases.json": json.dumps(changed)},
                role="index",
                resource_version=read.resource_version,
            )
            try:
                self._store(name, body, exists=read.resource_version is not None)
                return
            except KubeConflictError:
                read = self._read(name, fresh=True)
        raise KubeTemporaryError(f"configmap {self.namespace}/{name}: keeps changing")

    def _read(self, name: str, *, fresh: bool = False) -> _Read:
        now = self._clock()
        with self._reads_lock:
            cached = self._reads.get(name)
        if cached is not None and not fresh and now - cached.at < CACHE_SECONDS:
            return cached
        try:
            stored = kube_call(
                f"get configmap {self.namespace}/{name}",
                self._core.read_namespaced_config_map,
                name,
                self.namespace,
            )
            read = _Read(now, stored.metadata.resource_version, dict(stored.data or {}))
        except KubeNotFoundError:
            read = _Read(now, None, {})
        with self._reads_lock:
            self._reads[name] = read
        return read

    def _store(self, name: str, body: dict[str, Any], *, exists: bool) -> None:
        where = f"configmap {self.namespace}/{name}"
        if exists:
            stored = kube_call(
                f"replace {where}",
                self._core.replace_namespaced_config_map,
                name,
                self.namespace,
                body,
            )
        else:
            stored = kube_call(
                f"create {where}", self._core.create_namespaced_config_map, self.namespace, body
            )
        read = _Read(self._clock(), stored.metadata.resource_version, dict(stored.data or {}))
        with self._reads_lock:
            self._reads[name] = read

    def _write_guard(self) -> None:
        if self.fence is not None:
            self.fence()

    def _where(self, release: str) -> str:
        return f"configmap {self.namespace}/{state_name(self.prefix, release)}"


def _action(release: str, entry: dict[str, Any]) -> Action:
    return Action(
        id=int(entry["id"]),
        release=release,
        kind=ActionKind(entry["kind"]),
        intent=dict(entry["intent"]),
        status=ActionStatus(entry["status"]),
        observed=entry.get("observed"),
        decision_id=entry.get("decisionId"),
        error=entry.get("error"),
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _size(data: dict[str, str]) -> int:
    return sum(len(key) + len(value.encode()) for key, value in data.items())
