"""Settings of the controller, from the environment (``COALMINE_*``, Langfuse's own names
for its keys) and then from command-line flags, which win."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from coalmine.shared.kube.client import ClusterSettings
from coalmine.shared.settings import AdminToken, LangfuseConnection
from controller.source.budget import DEFAULT_PER_MINUTE
from controller.source.langfuse import DEFAULT_FIRST_READ


class ControllerSettings(LangfuseConnection, AdminToken, ClusterSettings):
    """Where the controller keeps state, listens, reads Langfuse and sends alerts."""

    model_config = SettingsConfigDict(
        env_prefix="COALMINE_", extra="forbid", frozen=True, populate_by_name=True
    )

    state: Path = Path("coalmine-state.db")
    """SQLite state file (WAL); the proxy reads its routing tables from the same file.
    In cluster mode, only the local cache of samples read from Langfuse."""

    admin_listen: str = "127.0.0.1:9465"
    """HOST:PORT of the admin API and dashboard."""

    metrics_listen: str | None = "127.0.0.1:9466"
    """HOST:PORT of the controller's Prometheus metrics; None: no endpoint."""

    analysis_token: SecretStr | None = None
    """A second token that opens only the analysis routes (``GET /analysis/...`` and
    Flagger's webhooks), for an external rollout that must not hold the admin token,
    which also allows manual actions (``COALMINE_ANALYSIS_TOKEN``; as strong as the
    admin token)."""

    app_url: str | None = None
    """The application the proxy fronts (as the proxy's ``COALMINE_APP_URL``): a prompt
    release's dataset rung sends each item to it, once per arm. ``coalmine run`` uses its
    proxy's. None: a prompt release's dataset rung pauses, saying so."""

    tick_seconds: float | None = Field(default=None, gt=0)
    """Seconds between two ticks; None: the shortest ``analysis.interval`` of the
    policies (at least 1 s)."""

    requests_per_minute: int = Field(default=DEFAULT_PER_MINUTE, ge=1)
    """Langfuse requests a minute the controller allows itself (General API bucket; the
    default leaves room under the Hobby plan's 30 for the app and people)."""

    judge_traffic: Literal["langfuse", "proxy"] = "langfuse"
    """Where the judge counts requests, errors and latency. ``proxy``: the proxies' own
    counts of every request (proxies with ``COALMINE_AGGREGATES`` on, writing to this
    state file or, in cluster mode, to ConfigMaps of this namespace); ``langfuse``: the
    traces read in Langfuse. ``coalmine run`` uses ``proxy`` when its proxy counts and
    this is not set. Applies to rollouts that start after it is changed."""

    score_sample: bool | None = None
    """Read scores only for a sample of requests, sized to the request budget, so that
    Langfuse requests do not grow with traffic: the proxies mark the sample, the
    controller reads its scores by trace id (``docs/judge.md``, sampled reads). None:
    on when ``judge_traffic`` is ``proxy`` (the sample's size comes from the proxies'
    counts)."""

    @property
    def reads_sampled(self) -> bool:
        """Whether scores are read for a sample of requests."""
        if self.score_sample is None:
            return self.judge_traffic == "proxy"
        return self.score_sample and self.judge_traffic == "proxy"

    score_first_read_seconds: float = Field(default=DEFAULT_FIRST_READ, ge=0)
    """With a score sample: age of a sampled trace when its scores are first read (raised
    to the policy's ``scoreSettle``); a trace still missing a score is read once more at
    its ``scoreTimeout``. Shorter: decisions sooner, more reads of traces not yet
    scored."""

    trace_settle_seconds: float = Field(default=10.0, ge=0)
    """A trace is read once its root span ended this long ago, so the app's spans
    exported a little after it still count in its cost and errors."""

    langfuse_project_id: str | None = None
    """Langfuse project id, for links to traces on the dashboard; None: links go through
    Langfuse's project-less trace URL."""

    webhook_url: str | None = None
    """JSON webhook called on promote, rollback, pause, await_approval and approve."""

    slack_webhook_url: str | None = None
    """Slack incoming webhook called on promote, rollback, pause, await_approval and
    approve."""
