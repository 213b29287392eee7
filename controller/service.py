"""The controller as a running service: its parts built from settings, a scheduler that
calls ``tick``, the admin API and the metrics endpoint."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from coalmine.shared.admin_token import (
    MIN_DISTINCT_CHARS,
    MIN_TOKEN_CHARS,
    TOKEN_RULE,
    weak_token,
)
from coalmine.shared.kube.client import KubeError, api_client
from coalmine.shared.routing_tables.configmap import ConfigMapRoutingStore
from coalmine.shared.routing_tables.store import RoutingTableStore, SqliteRoutingStore
from controller.actions import Routers
from controller.cluster.aggregates_cleanup import AggregatesCleanup
from controller.cluster.events import KubeEventRecorder, ObjectRef
from controller.cluster.lease import LeaseElector, LeaseTiming
from controller.cluster.release_configmaps import ClusterState
from controller.errors import SetupError
from controller.labels import LangfusePromptLabels, PromptLabels
from controller.ladder.dataset_gate import DatasetGates
from controller.loop import Controller, ProxyTraffic
from controller.metrics import ControllerMetrics
from controller.notify import MultiNotifier, Notifier, WebhookNotifier
from controller.release_store import ControllerState
from controller.routers import GatewayApiRouter
from controller.settings import ControllerSettings
from controller.source import SampleSource
from controller.source.aggregates import ProxyCounts
from controller.source.budget import BudgetSettings, RequestBudget
from controller.source.langfuse import LangfuseSource, SourceSettings
from controller.source.review_queue import ReviewQueue
from policies.model import Policy, RoutingProvider
from policies.policy_files import PolicyFiles

log = logging.getLogger("coalmine.controller")

MIN_TICK_SECONDS = 1.0
CLEANUP_CHECK_SECONDS = 60.0
"""How often the leader asks whether the stale proxy-count ConfigMaps are due a sweep."""


@dataclass
class ControllerService:
    """Everything one controller process runs."""

    settings: ControllerSettings
    policy_files: PolicyFiles
    state: ControllerState
    controller: Controller
    notifier: Notifier
    metrics: ControllerMetrics
    clock: Callable[[], float] = time.time
    elector: LeaseElector | None = None
    """Cluster mode: the Lease election; only its leader ticks."""
    events: KubeEventRecorder | None = None
    aggregates_cleanup: AggregatesCleanup | None = None
    """Cluster mode, judging the proxies' counts: deletes the ConfigMaps of gone proxies."""
    scheduler: BackgroundScheduler | None = None
    _policies: dict[str, Policy] = field(default_factory=dict)
    _policies_lock: threading.Lock = field(default_factory=threading.Lock)
    _stop_election: threading.Event = field(default_factory=threading.Event)
    _election: threading.Thread | None = None

    def current_policies(self) -> Mapping[str, Policy]:
        with self._policies_lock:
            return dict(self._policies)

    def reload_policies(self) -> Mapping[str, Policy]:
        """Reload the policy files; the proxy of ``coalmine run`` calls it too (from its
        own thread), so that both follow one view of the files."""
        with self._policies_lock:  # the last reload's set is the one kept
            policies = self.policy_files.reload()
            self._policies = dict(policies)
        return policies

    def tick_seconds(self) -> float:
        if self.settings.tick_seconds is not None:
            return self.settings.tick_seconds
        intervals = [policy.analysis.interval for policy in self.current_policies().values()]
        return max(MIN_TICK_SECONDS, min(intervals, default=60.0))

    def is_leader(self) -> bool:
        """Whether this replica acts: always outside cluster mode."""
        return self.elector is None or self.elector.is_leader()

    def tick(self) -> None:
        """One round: reload the policies, then the controller's tick at the clock's now
        (a standby replica only forgets what it read, so its status stays current)."""
        try:
            self.reload_policies()
            if not self.is_leader():
                self.state.refresh()
                return
            report = self.controller.tick(self.clock())
        except Exception:
            log.exception("tick failed")
            return
        for problem in report.action_errors:
            log.warning("%s", problem)

    def start(self) -> None:
        """Reconcile once, then tick on a schedule in a background thread; in cluster
        mode, first join the election (the first tick acts only if this replica leads)."""
        self.reload_policies()
        if self.elector is not None:
            self.elector.try_acquire_or_renew()
            self._election = threading.Thread(
                target=self.elector.run,
                args=(self._stop_election, self._leadership_changed),
                name="lease",
                daemon=True,
            )
            self._election.start()
        self.tick()
        scheduler = BackgroundScheduler(daemon=True)
        scheduler.add_job(
            self.tick,
            "interval",
            seconds=self.tick_seconds(),
            max_instances=1,
            coalesce=True,
            id="tick",
        )
        cleanup = self.aggregates_cleanup
        if cleanup is not None:  # it sweeps only on the leader, at most every 10 minutes
            scheduler.add_job(
                lambda: cleanup.sweep_if_due(self.clock()),
                "interval",
                seconds=CLEANUP_CHECK_SECONDS,
                max_instances=1,
                coalesce=True,
                id="aggregates-cleanup",
            )
        scheduler.start()
        self.scheduler = scheduler

    def _leadership_changed(self, leading: bool) -> None:
        if not leading:
            return
        # what this replica held in memory may predate another leader's actions
        self.controller.forget()
        self.state.refresh()
        if self.scheduler is not None:
            self.scheduler.modify_job("tick", next_run_time=datetime.now(UTC))

    def admin_app(self, token: str | None = None) -> Any:
        """The admin API and dashboard (FastAPI), guarded by the admin token (``token``,
        or the one the settings give).

        Raises SetupError when there is no token to guard it with."""
        from controller.admin import create_admin_app  # noqa: PLC0415 (FastAPI, on demand)
        from controller.dashboard import DashboardSettings  # noqa: PLC0415

        if token is None:
            token = admin_token(self.settings)
        return create_admin_app(
            self.controller,
            token=token,
            analysis_token=analysis_token(self.settings),
            clock=self.clock,
            poll_stale_after=3 * self.tick_seconds(),
            dashboard=DashboardSettings(
                langfuse_base_url=self.settings.langfuse_base_url,
                langfuse_project_id=self.settings.langfuse_project_id,
            ),
        )

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
            self.scheduler = None
        if self._election is not None:
            self._stop_election.set()  # the elector gives the Lease up as it ends
            self._election.join(timeout=10)
            self._election = None
        if self.events is not None:
            self.events.close()
        self.notifier.close()
        parts = (
            self.controller.source,
            self.controller.labels,
            self.controller.reviews,
            self.controller.rungs,
            self.controller.routing,
        )
        for part in parts:
            close = getattr(part, "close", None)
            if callable(close):
                close()
        self.state.close()


def analysis_token(settings: ControllerSettings) -> str | None:
    """The analysis routes' own token, if set. Raises SetupError when it is too weak."""
    if settings.analysis_token is None:
        return None
    token = settings.analysis_token.get_secret_value()
    if len(token) < MIN_TOKEN_CHARS or len(set(token)) < MIN_DISTINCT_CHARS:
        raise SetupError(
            f"COALMINE_ANALYSIS_TOKEN: the analysis token is too weak; it needs {TOKEN_RULE}"
        )
    return token


def admin_token(settings: ControllerSettings) -> str:
    """The admin API's token from the settings.

    Raises SetupError when neither COALMINE_ADMIN_TOKEN nor COALMINE_ADMIN_TOKEN_FILE is
    set, when the token file cannot be read or is empty, or when the token is too weak
    (``coalmine.shared.admin_token``)."""
    try:
        token = settings.token()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise SetupError(
            f"COALMINE_ADMIN_TOKEN_FILE {settings.admin_token_file}: cannot read the admin "
            f"token: {reason}"
        ) from None
    if token is None:
        if settings.admin_token is None and settings.admin_token_file is not None:
            raise SetupError(
                f"COALMINE_ADMIN_TOKEN_FILE {settings.admin_token_file}: the admin token "
                "file is empty"
            )
        raise SetupError(
            "the admin API needs a token: set COALMINE_ADMIN_TOKEN or COALMINE_ADMIN_TOKEN_FILE"
        )
    weakness = weak_token(settings, token)
    if weakness is not None:
        raise SetupError(weakness)
    return token


def build_service(
    settings: ControllerSettings,
    policy_paths: Sequence[Path],
    *,
    source: SampleSource | None = None,
    labels: PromptLabels | None = None,
    clock: Callable[[], float] = time.time,
) -> ControllerService:
    """Build the controller from its settings; ``source`` and ``labels`` replace the
    Langfuse ones (tests, other backends).

    Raises SetupError when it cannot start as configured."""
    reviews: ReviewQueue | None = None
    datasets: DatasetGates | None = None
    if source is None or labels is None:
        keys = settings.langfuse_keys()
        if keys is None:
            raise SetupError(
                "LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY must be set for the controller"
            )
        budget = RequestBudget(BudgetSettings(per_minute=settings.requests_per_minute), clock=clock)
        if source is None:
            source = LangfuseSource(
                settings.langfuse_base_url,
                *keys,
                budget=budget,
                clock=clock,
                settings=SourceSettings(
                    settle=settings.trace_settle_seconds,
                    sampled=settings.reads_sampled,
                    first_read=settings.score_first_read_seconds,
                ),
            )
        if labels is None:
            labels = LangfusePromptLabels(settings.langfuse_base_url, *keys, budget=budget)
        # annotation queues are a rate-limit bucket of their own; score reads share the
        # source's budget
        reviews = ReviewQueue(
            settings.langfuse_base_url,
            *keys,
            queue_budget=RequestBudget(
                BudgetSettings(per_minute=settings.requests_per_minute), clock=clock
            ),
            score_budget=budget,
        )
        datasets = DatasetGates(
            base_url=settings.langfuse_base_url, public_key=keys[0], secret_key=keys[1]
        )
    policy_files = PolicyFiles(list(policy_paths))
    service_box: list[ControllerService] = []

    def policies() -> Mapping[str, Policy]:
        return service_box[0].current_policies()

    cluster = _cluster(settings, policies) if settings.cluster else None
    state: ControllerState
    routing: RoutingTableStore
    if cluster is None:
        state = ControllerState(settings.state)
        routing = SqliteRoutingStore(settings.state)
    else:
        state, routing = cluster.state, cluster.routing
    notifiers = _notifiers(settings)
    notifier = MultiNotifier(notifiers)

    from_proxies: ProxyTraffic | None = None
    if settings.judge_traffic == "proxy":
        from_proxies = ProxyTraffic(
            ProxyCounts.local(settings.state) if cluster is None else cluster.counts,
            sample_budget=settings.requests_per_minute if settings.reads_sampled else None,
        )
    controller = Controller(
        state=state,
        routing=routing,
        source=source,
        labels=labels,
        policies=policies,
        notify=notifier.send,
        events=None if cluster is None else cluster.events,
        from_proxies=from_proxies,
    )
    controller.reviews = reviews
    if cluster is not None:
        controller.routers = Routers(
            controller.routers.default,
            {**controller.routers.others, RoutingProvider.GATEWAY_API: cluster.gateway},
        )
    controller.rungs.datasets = datasets
    controller.rungs.app_url = settings.app_url
    if cluster is not None:
        controller.fence = cluster.elector.fence
    # the proxies write their ConfigMaps only when the controller judges on their counts
    cleanup = cluster.cleanup if cluster is not None and from_proxies is not None else None
    metrics = ControllerMetrics()
    metrics.watch(
        controller,
        clock=clock,
        policy_load_errors=lambda: policy_files.load_errors,
        notifications=lambda: _notification_counts(notifiers),
        leader=None if cluster is None else cluster.elector.is_leader,
        aggregates_deleted=None if cleanup is None else lambda: cleanup.deleted,
    )
    service = ControllerService(
        settings,
        policy_files,
        state,
        controller,
        notifier,
        metrics,
        clock,
        elector=None if cluster is None else cluster.elector,
        events=None if cluster is None else cluster.events,
        aggregates_cleanup=cleanup,
    )
    service_box.append(service)
    return service


def _notifiers(settings: ControllerSettings) -> list[Notifier]:
    notifiers: list[Notifier] = []
    if settings.webhook_url:
        notifiers.append(WebhookNotifier(settings.webhook_url))
    if settings.slack_webhook_url:
        notifiers.append(WebhookNotifier(settings.slack_webhook_url, slack=True))
    return notifiers


@dataclass(frozen=True)
class _Cluster:
    elector: LeaseElector
    state: ClusterState
    routing: ConfigMapRoutingStore
    events: KubeEventRecorder
    counts: ProxyCounts
    cleanup: AggregatesCleanup
    gateway: GatewayApiRouter


def _cluster(
    settings: ControllerSettings, policies: Callable[[], Mapping[str, Policy]]
) -> _Cluster:
    """The cluster-mode parts: one API client for the Lease, the state ConfigMaps, the
    routing ConfigMaps and the Events."""
    try:
        client = api_client(settings)
    except KubeError as error:
        raise SetupError(str(error)) from None
    namespace = settings.resolved_namespace()
    identity = settings.identity()
    elector = LeaseElector(
        client,
        namespace,
        settings.lease_name,
        identity,
        timing=LeaseTiming(
            lease_duration=settings.lease_duration_seconds,
            renew_deadline=settings.renew_deadline_seconds,
            retry_period=settings.retry_period_seconds,
        ),
    )
    state = ClusterState(
        settings.state, client, namespace, settings.configmap_prefix, fence=elector.fence
    )
    routing = ConfigMapRoutingStore(client, namespace, settings.configmap_prefix, ())

    def targets() -> dict[str, ObjectRef]:
        found: dict[str, ObjectRef] = {}
        for name, policy in policies().items():
            target = None if policy.kubernetes is None else policy.kubernetes.event_target
            if target is not None:
                found[name] = ObjectRef(target.api_version, target.kind, target.name)
        return found

    events = KubeEventRecorder(
        client,
        namespace,
        instance=identity,
        pod=ObjectRef("v1", "Pod", identity, settings.pod_uid),
        targets=targets,
    )
    counts = ProxyCounts.cluster(client, namespace, settings.configmap_prefix)
    cleanup = AggregatesCleanup(
        client, namespace, settings.configmap_prefix, leading=elector.is_leader
    )
    gateway = GatewayApiRouter(client, namespace)
    return _Cluster(elector, state, routing, events, counts, cleanup, gateway)


def _notification_counts(notifiers: Sequence[Notifier]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for notifier in notifiers:
        counts = getattr(notifier, "counts", None)
        if callable(counts):
            for outcome, count in counts().items():
                totals[outcome] = totals.get(outcome, 0) + count
    return totals
