"""Settings of the proxy, from the environment (``COALMINE_*``, Langfuse's own names for
its keys) and then from command-line flags, which win."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from coalmine.shared.kube.client import ClusterSettings
from coalmine.shared.settings import AdminToken, LangfuseConnection
from policies.model import HttpUrl

DEFAULT_APP_URL = "http://127.0.0.1:8000"
"""Where the application listens when nothing says otherwise: uvicorn's default port."""


class ProxySettings(LangfuseConnection, AdminToken, ClusterSettings):
    """How one proxy process listens, where it reads routing tables, where spans go."""

    model_config = SettingsConfigDict(
        env_prefix="COALMINE_", extra="forbid", frozen=True, populate_by_name=True
    )

    listen: str = "127.0.0.1:8080"
    """HOST:PORT the proxy serves the application's traffic on."""

    app_url: HttpUrl = DEFAULT_APP_URL
    """Base URL of the application this proxy fronts: where both arms of every release
    whose policy names no ``target.upstreams`` (a prompt-only release) are sent."""

    metrics_listen: str | None = "127.0.0.1:9464"
    """HOST:PORT of the Prometheus metrics endpoint; None: no endpoint."""

    state: Path | None = None
    """SQLite state file the controller writes routing tables to; None: no store, every
    release at canary weight 0 unless pinned. Not read in cluster mode, where routing
    tables are ConfigMaps the proxy watches."""

    spans: bool = True
    """Report every request to Langfuse as the root span of its trace."""

    max_header_bytes: int = Field(default=65536, ge=1024)
    """Requests whose head (request line and header lines, as read) or whose headers add
    up to more are refused with 431; the head is never read further than this. Trailers
    of a chunked body are held to the same size."""

    header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    """Seconds a client has from the first byte of a request head to its end; a head not
    whole in time is answered 408 and its connection closed."""

    body_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    """Seconds a request body may stall (no byte arriving) while it is read; then the
    client gets 408 (or, once the response has begun, the connection is closed)."""

    idle_timeout_seconds: float = Field(default=5.0, gt=0, le=3600)
    """Seconds a client connection may stay silent before a request, when new or between
    two requests; then it is closed."""

    force_arm_tries: int = Field(default=5, ge=1, le=1000)
    """Wrong admin tokens a client address may send to force an arm before it has to
    wait (429); it gets one try back every ``force_arm_refill_seconds``."""

    force_arm_refill_seconds: float = Field(default=60.0, gt=0, le=86400)
    """Seconds for a client address to get back one try at the admin token."""

    routing_poll_interval: float = Field(default=0.25, gt=0, le=1)
    """Seconds between two looks at the state store for new routing tables."""

    policy_reload_interval: float = Field(default=5.0, gt=0, le=300)
    """Seconds between two looks at the policy files: a release added, removed or edited
    is routed by its new policy within this time."""

    aggregates: bool = True
    """Count every forwarded request per release, arm and minute into the state file
    (local mode) or a ConfigMap of this proxy's own (cluster mode, where it needs RBAC
    on ConfigMaps it cannot name: the chart's ``coalmine.proxyAggregates``)."""

    aggregates_flush_seconds: float = Field(default=10.0, gt=0, le=300)
    """Seconds between two writes of the proxy's per-minute request counts to the state
    file (local mode) or its ConfigMap (cluster mode)."""

    graceful_shutdown_seconds: float = Field(default=30.0, ge=0)
    """On SIGTERM, how long requests in flight may take to finish."""
