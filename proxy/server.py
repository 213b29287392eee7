"""Builds the proxy from its settings and policies and serves it on uvicorn."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import uvicorn
from prometheus_client import disable_created_metrics, start_http_server

from coalmine.shared.aggregates.configmap import ConfigMapAggregateStore
from coalmine.shared.aggregates.sqlite import SqliteAggregateStore
from coalmine.shared.aggregates.store import AggregateWriter
from coalmine.shared.kube.client import KubeError, api_client
from coalmine.shared.routing_tables.configmap import ConfigMapRoutingStore
from coalmine.shared.routing_tables.store import RoutingTableStore, SqliteRoutingStore
from coalmine.shared.routing_tables.table import RoutingTable
from policies.model import Policy
from proxy.aggregates import AggregateRecorder, proxy_id
from proxy.app import ProxyApp
from proxy.connection import ConnectionLimits, protocol_with
from proxy.metrics import PolicySetOutcome, ProxyMetrics, SpanCounts
from proxy.routes import (
    PolicyFeed,
    PolicyRefresher,
    PolicyUpdate,
    Releases,
    RoutingRefresher,
)
from proxy.settings import ProxySettings
from proxy.spans import NoopSpanReporter, OtlpSpanReporter, SpanReporter
from proxy.throttle import FailedAttempts
from proxy.transport import PooledTransport

log = logging.getLogger("coalmine.proxy")

STORE_SYNC_SECONDS = 5.0
"""Cluster mode: how long start-up waits for the routing ConfigMaps' first listing."""

disable_created_metrics()  # type: ignore[no-untyped-call]
# httpx logs every request at INFO: far too much for a proxy's hot path
logging.getLogger("httpx").setLevel(logging.WARNING)


def split_address(address: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) into its parts; ValueError names ``what``."""
    host, separator, port = address.rpartition(":")
    if not separator or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{what}: {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def upstream_transport(max_connections: int | None = None) -> httpx.AsyncBaseTransport:
    """The transport to upstreams. The proxy calls it directly, not through an httpx
    client: a client would keep the upstreams' cookies and send them with other users'
    requests, follow redirects, and add headers of its own. ``max_connections`` bounds
    the connections to each upstream."""
    return PooledTransport(
        max_connections_per_host=max_connections,
        max_idle_per_host=max_connections or 512,
        idle_timeout=30.0,
    )


def span_reporter(settings: ProxySettings) -> SpanReporter:
    if not settings.spans:
        return NoopSpanReporter()
    keys = settings.langfuse_keys()
    if keys is None:
        log.warning(
            "request spans are off: LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY are not "
            "both set (pass --no-spans to silence this)"
        )
        return NoopSpanReporter()
    return OtlpSpanReporter(settings.langfuse_base_url, *keys)


def build_app(
    settings: ProxySettings,
    policies: Sequence[Policy],
    pins: dict[str, float] | None = None,
    *,
    store: RoutingTableStore | None = None,
    metrics: ProxyMetrics | None = None,
    spans: SpanReporter | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    policy_feed: PolicyFeed | None = None,
) -> ProxyApp:
    """The proxy application. ``store`` overrides the settings' state file; ``transport``
    replaces the network for the upstream clients (tests chain ASGI apps with it);
    ``policy_feed``, polled every ``policy_reload_interval``, gives the policies in force
    while the proxy runs (None: ``policies`` for good). Requests are counted per minute
    into the ConfigMaps in cluster mode, else into the state file (neither: not
    counted)."""
    releases = Releases(policies, pins, app_url=settings.app_url)
    metrics = metrics or ProxyMetrics()
    spans = spans or span_reporter(settings)
    client = _cluster_client(settings) if settings.cluster else None
    if store is None and client is not None:
        store = ConfigMapRoutingStore(
            client,
            settings.resolved_namespace(),
            settings.configmap_prefix,
            [policy.name for policy in policies],
            watch=True,
        )
        if not store.wait_synced(STORE_SYNC_SECONDS):
            log.warning(
                "routing ConfigMaps not listed within %ss: canary weight 0 until they are",
                STORE_SYNC_SECONDS,
            )
    elif store is None and settings.state is not None:
        store = SqliteRoutingStore(settings.state, readonly=True)
    refresher = None
    if store is not None:

        def applied(table: RoutingTable) -> None:
            release = releases.by_name.get(table.release)
            if release is not None:
                metrics.routing(release.name, release.table.canary_weight, release.table.version)

        refresher = RoutingRefresher(
            releases,
            store,
            interval=settings.routing_poll_interval,
            on_applied=applied,
            on_error=lambda release, _message: metrics.table_errors.labels(release).inc(),
        )
    policy_refresher = None
    if policy_feed is not None:
        policy_refresher = PolicyRefresher(
            releases,
            policy_feed.policies,
            interval=settings.policy_reload_interval,
            tables=None if store is None else _table_reader(store),
            kept_out=policy_feed.kept_out,
            on_update=lambda update: _count_update(update, releases, metrics),
            on_failed=lambda _message: metrics.policy_sets.labels(PolicySetOutcome.FAILED).inc(),
        )
    recorder = _recorder(settings, metrics, client)
    metrics.registry.register(SpanCounts(lambda: _span_counts(spans)))
    if transport is None:
        primary = upstream_transport()
        max_shadow = max(
            (
                release.table.shadow.max_in_flight
                for release in releases.by_name.values()
                if release.table.shadow is not None
            ),
            default=64,
        )
        shadow = upstream_transport(max_connections=max_shadow)
    else:
        primary = shadow = transport
    return ProxyApp(
        releases,
        transport=primary,
        shadow_transport=shadow,
        metrics=metrics,
        spans=spans,
        admin_token=settings.token(),
        max_header_bytes=settings.max_header_bytes,
        force_arm_attempts=FailedAttempts(
            settings.force_arm_tries, settings.force_arm_refill_seconds
        ),
        refreshers=[part for part in (policy_refresher, refresher, recorder) if part is not None],
        aggregates=recorder,
    )


def _recorder(
    settings: ProxySettings, metrics: ProxyMetrics, client: Any
) -> AggregateRecorder | None:
    """The per-minute request counts: to this proxy's ConfigMap in cluster mode, else to
    the state file; None when there is neither."""
    store: AggregateWriter
    if not settings.aggregates:
        return None
    if client is not None:
        namespace = settings.resolved_namespace()
        store = ConfigMapAggregateStore(
            client, namespace, settings.configmap_prefix, proxy_id(settings)
        )
    elif settings.state is not None:
        store = SqliteAggregateStore(settings.state, proxy_id(settings))
    else:
        return None
    return AggregateRecorder(store, metrics, interval=settings.aggregates_flush_seconds)


def _cluster_client(settings: ProxySettings) -> Any:
    """The API client of cluster mode; ValueError when it cannot be configured."""
    try:
        return api_client(settings)
    except KubeError as error:
        raise ValueError(str(error)) from None


def _table_reader(store: RoutingTableStore) -> Callable[[str], RoutingTable | None]:
    """Reads the stored table of a release the proxy starts routing; a store that
    watches its releases one by one is told to follow it first."""
    follow = getattr(store, "follow", None)

    def read(release: str) -> RoutingTable | None:
        if callable(follow):
            follow([release])
        return store.read(release)

    return read


def _count_update(update: PolicyUpdate, releases: Releases, metrics: ProxyMetrics) -> None:
    for name in update.removed:
        metrics.unrouted(name)
    for name in (*update.added, *update.edited):
        release = releases.by_name.get(name)
        if release is not None:
            metrics.routing(name, release.table.canary_weight, release.table.version)
    metrics.routed_releases.set(len(releases.by_name))
    if update.refused:
        metrics.policy_sets.labels(PolicySetOutcome.REFUSED).inc()
    elif update.changed:
        metrics.policy_sets.labels(PolicySetOutcome.APPLIED).inc()


def _span_counts(spans: SpanReporter) -> dict[str, float]:
    return {
        "sent": float(getattr(spans, "spans_sent", 0)),
        "dropped_full": float(getattr(spans, "spans_dropped_full", 0)),
        "failed": float(getattr(spans, "spans_failed", 0)),
        "queued": float(getattr(spans, "queue_size", 0)),
    }


def connection_limits(settings: ProxySettings, metrics: ProxyMetrics) -> ConnectionLimits:
    """What a client connection may take (head size, head time, silence), with what it
    overstepped counted in ``metrics``."""
    return ConnectionLimits(
        max_head_bytes=settings.max_header_bytes,
        header_timeout=settings.header_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
        idle_timeout=settings.idle_timeout_seconds,
        on_refused=lambda reason: metrics.refused.labels(reason).inc(),
        on_timeout=lambda phase: metrics.client_timeouts.labels(phase).inc(),
    )


def serve(
    app: ProxyApp, settings: ProxySettings, sockets: list[socket.socket] | None = None
) -> None:
    """Serve until SIGINT or SIGTERM; requests in flight get the graceful period.
    ``sockets``: listening sockets to serve on instead of binding ``settings.listen``."""
    config = server_config(app, settings)
    if settings.metrics_listen is not None:
        metrics_host, metrics_port = split_address(settings.metrics_listen, "--metrics-listen")
        start_http_server(metrics_port, metrics_host, registry=app.metrics.registry)
    uvicorn.Server(config).run(sockets=sockets)


def server_config(app: ProxyApp, settings: ProxySettings) -> uvicorn.Config:
    """uvicorn's settings for the proxy: httptools held to the connection limits, uvloop."""
    host, port = split_address(settings.listen, "--listen")
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_with(connection_limits(settings, app.metrics)),
        loop="uvloop",
        lifespan="on",
        access_log=False,
        server_header=False,
        date_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_seconds),
        log_level="warning",
    )
