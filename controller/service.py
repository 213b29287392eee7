"""The controller as a running service: its parts built from settings, a scheduler that
calls ``tick``, the admin API and the metrics endpoint."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from coalmine.state.store import SqliteRoutingStore
from controller.labels import LangfusePromptLabels, PromptLabels
from controller.loop import Controller
from controller.metrics import ControllerMetrics
from controller.notify import MultiNotifier, Notifier, WebhookNotifier
from controller.policy_files import PolicyFiles
from controller.settings import ControllerSettings
from controller.source import SampleSource
from controller.source.budget import BudgetSettings, RequestBudget
from controller.source.langfuse import LangfuseSource
from controller.state import ControllerState
from policies.model import Policy

log = logging.getLogger("coalmine.controller")

MIN_TICK_SECONDS = 1.0


class SetupError(Exception):
    """The controller cannot start as configured (permanent)."""


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
    scheduler: BackgroundScheduler | None = None
    _policies: dict[str, Policy] = field(default_factory=dict)
    _policies_lock: threading.Lock = field(default_factory=threading.Lock)

    def current_policies(self) -> Mapping[str, Policy]:
        with self._policies_lock:
            return dict(self._policies)

    def reload_policies(self) -> Mapping[str, Policy]:
        policies = self.policy_files.reload()
        with self._policies_lock:
            self._policies = dict(policies)
        return policies

    def tick_seconds(self) -> float:
        if self.settings.tick_seconds is not None:
            return self.settings.tick_seconds
        intervals = [policy.analysis.interval for policy in self.current_policies().values()]
        return max(MIN_TICK_SECONDS, min(intervals, default=60.0))

    def tick(self) -> None:
        """One round: reload the policies, then the controller's tick at the clock's now."""
        try:
            self.reload_policies()
            report = self.controller.tick(self.clock())
        except Exception:
            log.exception("tick failed")
            return
        for problem in report.action_errors:
            log.warning("%s", problem)

    def start(self) -> None:
        """Reconcile once, then tick on a schedule in a background thread."""
        self.reload_policies()
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
        scheduler.start()
        self.scheduler = scheduler

    def admin_app(self) -> Any:
        """The admin API and dashboard (FastAPI), guarded by the admin token."""
        from controller.admin import create_admin_app  # noqa: PLC0415 (FastAPI, on demand)
        from controller.dashboard import DashboardSettings  # noqa: PLC0415

        token = self.settings.token()
        if token is None:
            raise SetupError(
                "the admin API needs a token: set COALMINE_ADMIN_TOKEN or COALMINE_ADMIN_TOKEN_FILE"
            )
        return create_admin_app(
            self.controller,
            token=token,
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
        self.notifier.close()
        for part in (self.controller.source, self.controller.labels, self.controller.routing):
            close = getattr(part, "close", None)
            if callable(close):
                close()
        self.state.close()


def build_service(
    settings: ControllerSettings,
    policy_paths: Sequence[Path],
    *,
    source: SampleSource | None = None,
    labels: PromptLabels | None = None,
    clock: Callable[[], float] = time.time,
) -> ControllerService:
    """Build the controller from its settings; ``source`` and ``labels`` replace the
    Langfuse ones (tests, other backends)."""
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
                settle=settings.trace_settle_seconds,
            )
        if labels is None:
            labels = LangfusePromptLabels(settings.langfuse_base_url, *keys, budget=budget)
    state = ControllerState(settings.state)
    policy_files = PolicyFiles(list(policy_paths))
    notifiers: list[Notifier] = []
    if settings.webhook_url:
        notifiers.append(WebhookNotifier(settings.webhook_url))
    if settings.slack_webhook_url:
        notifiers.append(WebhookNotifier(settings.slack_webhook_url, slack=True))
    notifier = MultiNotifier(notifiers)
    service_box: list[ControllerService] = []

    def policies() -> Mapping[str, Policy]:
        return service_box[0].current_policies()

    controller = Controller(
        state=state,
        routing=SqliteRoutingStore(settings.state),
        source=source,
        labels=labels,
        policies=policies,
        notify=notifier.send,
    )
    metrics = ControllerMetrics()
    metrics.watch(
        controller,
        clock=clock,
        policy_load_errors=lambda: policy_files.load_errors,
        notifications=lambda: _notification_counts(notifiers),
    )
    service = ControllerService(settings, policy_files, state, controller, notifier, metrics, clock)
    service_box.append(service)
    return service


def _notification_counts(notifiers: Sequence[Notifier]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for notifier in notifiers:
        counts = getattr(notifier, "counts", None)
        if callable(counts):
            for outcome, count in counts().items():
                totals[outcome] = totals.get(outcome, 0) + count
    return totals
