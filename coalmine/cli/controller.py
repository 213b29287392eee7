"""`coalmine controller` (the control plane alone) and `coalmine run` (proxy and controller
in one process, the sidecar default)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import ValidationError

from coalmine.cli.errors import InputError
from coalmine.cli.listen import listening
from coalmine.cli.proxy import (
    PROXY_GUARD,
    AppUrlOption,
    check_admin_token,
    load_policies,
    load_routed_policies,
    parse_weights,
)
from coalmine.cli.signals import HELD, HeldSignals

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")

PolicyOption = Annotated[
    list[Path],
    typer.Option(
        "--policy",
        help="Policy file or directory of *.yaml files (repeatable); watched and reloaded.",
    ),
]
StateOption = Annotated[
    Path | None,
    typer.Option(help="SQLite state file. [default: coalmine-state.db]"),
]
AdminOption = Annotated[
    str | None,
    typer.Option(help="HOST:PORT of the admin API and dashboard. [default: 127.0.0.1:9465]"),
]
LogOption = Annotated[str, typer.Option(help="Log level: critical, error, warning, info, debug.")]


def register(app: typer.Typer) -> None:
    """Add the controller and run commands to the CLI."""

    @app.command("controller")
    def controller(
        *,
        policy: PolicyOption,
        state: StateOption = None,
        admin_listen: AdminOption = None,
        metrics_listen: Annotated[
            str | None,
            typer.Option(help="HOST:PORT of the Prometheus metrics. [default: 127.0.0.1:9466]"),
        ] = None,
        log_level: LogOption = "info",
    ) -> None:
        """Poll Langfuse, judge each release, and promote or roll back by moving prompt
        labels and routing weights.

        Settings also come from the environment: COALMINE_STATE, COALMINE_ADMIN_LISTEN,
        COALMINE_ADMIN_TOKEN (or COALMINE_ADMIN_TOKEN_FILE), COALMINE_ANALYSIS_TOKEN,
        COALMINE_WEBHOOK_URL, COALMINE_SLACK_WEBHOOK_URL, COALMINE_REQUESTS_PER_MINUTE,
        and Langfuse's LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY, LANGFUSE_BASE_URL. Flags
        win.

        Cluster mode (COALMINE_CLUSTER=true): state in ConfigMaps, one acting replica
        elected by a Lease, Kubernetes Events; COALMINE_NAMESPACE, COALMINE_POD_NAME,
        COALMINE_KUBECONFIG, COALMINE_CONFIGMAP_PREFIX, COALMINE_LEASE_NAME and the
        COALMINE_LEASE_DURATION_SECONDS, _RENEW_DEADLINE_SECONDS, _RETRY_PERIOD_SECONDS
        timing (docs/kubernetes.md).
        """
        _logging(log_level)
        settings = _controller_settings(
            state=state, admin_listen=admin_listen, metrics_listen=metrics_listen
        )
        _load_at_start(policy)
        with HeldSignals() as held:
            service, token = _service(settings, policy)
            try:
                if settings.metrics_listen is not None:
                    _serve_metrics(settings.metrics_listen, service.metrics.registry)
                admin = _uvicorn(service.admin_app(token), settings.admin_listen, "--admin-listen")
                _listening_admin(settings.admin_listen)
                service.start()
                _serve([admin], held)
            finally:
                service.stop()

    @app.command("run")
    def run(  # noqa: PLR0913 (a command's parameters are its flags)
        *,
        policy: PolicyOption,
        state: StateOption = None,
        listen: Annotated[
            str | None,
            typer.Option(help="HOST:PORT for the application's traffic. [default: 127.0.0.1:8080]"),
        ] = None,
        app_url: AppUrlOption = None,
        admin_listen: AdminOption = None,
        metrics_listen: Annotated[
            str | None,
            typer.Option(
                help="HOST:PORT of the Prometheus metrics of both. [default: 127.0.0.1:9464]"
            ),
        ] = None,
        weight: Annotated[
            list[str] | None,
            typer.Option(help="Pin a release's canary weight in the proxy: RELEASE=PCT."),
        ] = None,
        log_level: LogOption = "info",
        proxy_workers: Annotated[
            int,
            typer.Option(
                min=1,
                max=64,
                help="Proxy processes sharing the listening port (SO_REUSEPORT), each "
                "following the policy files and routing tables itself; the metrics endpoint "
                "sums theirs. 1: the proxy runs in this process.",
            ),
        ] = 1,
    ) -> None:
        """Proxy and controller in one process (the sidecar default): the proxy routes the
        application's traffic by the routing tables the controller writes to the state
        file.

        Environment as for `coalmine proxy` and `coalmine controller`; with
        COALMINE_CLUSTER=true the routing tables are ConfigMaps that the proxy watches.
        The proxy follows the policies the controller reloads, every
        COALMINE_POLICY_RELOAD_INTERVAL seconds (5).
        """
        _logging(log_level)
        settings = _controller_settings(state=state, admin_listen=admin_listen)
        proxy_settings = _proxy_settings(
            state=settings.state, listen=listen, app_url=app_url, metrics_listen=metrics_listen
        )
        if settings.app_url is None:  # the dataset rung sends items to the proxy's app
            settings = settings.model_copy(update={"app_url": str(proxy_settings.app_url)})
        if proxy_settings.aggregates and "COALMINE_JUDGE_TRAFFIC" not in os.environ:
            # the proxy beside it counts every request: judge traffic on those counts
            settings = settings.model_copy(update={"judge_traffic": "proxy"})
        policies = _load_at_start(policy, routed=True)
        pins = parse_weights(weight or [])
        check_admin_token(proxy_settings)
        with HeldSignals() as held:
            if proxy_workers > 1:
                _run_with_workers(
                    settings, proxy_settings, (policy, pins, log_level, proxy_workers), held
                )
            else:
                _run_in_process(settings, proxy_settings, (policy, policies, pins), held)


def _run_in_process(
    settings: Any,
    proxy_settings: Any,
    policy: tuple[list[Path], list[Any], dict[str, float]],
    held: HeldSignals,
) -> None:
    """``coalmine run``: the proxy and the controller in this process (``policy``: the
    policy paths, the policies loaded from them, the pinned weights)."""
    from proxy.routes import PolicyFeed  # noqa: PLC0415
    from proxy.server import build_app, server_config, split_address  # noqa: PLC0415

    paths, policies, pins = policy
    service, token = _service(settings, paths)
    try:
        try:
            # one view of the policy files: the proxy reloads the controller's
            proxy_app = build_app(
                proxy_settings,
                policies,
                pins,
                policy_feed=PolicyFeed(service.reload_policies, service.policy_files.kept_out),
            )
        except ValueError as error:
            raise InputError(str(error)) from None
        if proxy_settings.metrics_listen is not None:
            service.metrics.registry.register(_Merged(proxy_app.metrics.registry))
            _serve_metrics(proxy_settings.metrics_listen, service.metrics.registry)
        servers = [
            # the proxy's own server settings: heads bounded, head and idle timeouts
            _signal_free(server_config(proxy_app, proxy_settings)),
            _uvicorn(service.admin_app(token), settings.admin_listen, "--admin-listen"),
        ]
        host, _ = split_address(proxy_settings.listen, "--listen")
        listening("proxy", f"http://{proxy_settings.listen}", host, PROXY_GUARD)
        _listening_admin(settings.admin_listen)
        service.start()
        _serve(servers, held)
    finally:
        service.stop()


class _Merged:
    """Another registry's metrics, collected into this one (one scrape for both)."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def collect(self) -> Any:
        return self.registry.collect()


def _run_with_workers(
    settings: Any,
    proxy_settings: Any,
    workers: tuple[list[Path], dict[str, float], str, int],
    held: HeldSignals,
) -> None:
    """``coalmine run --proxy-workers N``: the controller in this process, the proxy in N
    worker processes (``workers``: policy paths, pins, log level, N); a worker that ends
    ends the command with status 1."""
    from proxy.errors import WorkerError  # noqa: PLC0415
    from proxy.server import split_address  # noqa: PLC0415
    from proxy.workers import (  # noqa: PLC0415
        STOP_MARGIN_SECONDS,
        WorkerMetrics,
        WorkerPool,
        WorkerSpec,
    )

    paths, pins, log_level, count = workers
    policies = _load_at_start(paths, routed=True)
    pool = WorkerPool(
        WorkerSpec(proxy_settings, tuple(policies), tuple(paths), pins, log_level), count
    )
    service, token = _service(settings, paths)
    try:
        try:
            pool.start()
        except (WorkerError, ValueError, OSError) as error:
            raise InputError(str(error)) from None
        if proxy_settings.metrics_listen is not None:
            service.metrics.registry.register(WorkerMetrics(pool))
            _serve_metrics(proxy_settings.metrics_listen, service.metrics.registry)
        admin = _uvicorn(service.admin_app(token), settings.admin_listen, "--admin-listen")
        host, _ = split_address(proxy_settings.listen, "--listen")
        listening(f"proxy ({count} workers)", f"http://{proxy_settings.listen}", host, PROXY_GUARD)
        _listening_admin(settings.admin_listen)
        service.start()
        if _serve([admin], held, workers=pool):
            raise SystemExit(1)
    finally:
        pool.stop(proxy_settings.graceful_shutdown_seconds + STOP_MARGIN_SECONDS)
        service.stop()


def _logging(level: str) -> None:
    if level not in LOG_LEVELS:
        raise InputError(f"--log-level: {level!r} is not one of {', '.join(LOG_LEVELS)}")
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def _first_error(error: Exception) -> str:
    if isinstance(error, ValidationError):
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"setting {where}: {first['msg']}"
    return str(error)


def _controller_settings(**flags: Any) -> Any:
    from controller.settings import ControllerSettings  # noqa: PLC0415

    overrides = {key: value for key, value in flags.items() if value is not None}
    try:
        return ControllerSettings(**overrides)
    except ValidationError as error:
        raise InputError(_first_error(error)) from None


def _proxy_settings(**flags: Any) -> Any:
    """The proxy's settings of ``coalmine run``: the environment, then the flags given."""
    from proxy.server import split_address  # noqa: PLC0415
    from proxy.settings import ProxySettings  # noqa: PLC0415

    overrides = {key: value for key, value in flags.items() if value is not None}
    try:
        settings = ProxySettings(**overrides)
        split_address(settings.listen, "--listen")
    except (ValidationError, ValueError) as error:
        raise InputError(_first_error(error)) from None
    return settings


def _load_at_start(paths: list[Path], *, routed: bool = False) -> list[Any]:
    """The policies as they are at start, where a bad file is an error, not a warning;
    ``routed``: also where they conflict as releases behind one proxy."""
    from policies.policy_files import PolicyFiles  # noqa: PLC0415

    if not paths:
        raise InputError("--policy: at least one policy file or directory is needed")
    for path in paths:
        if not path.exists():
            raise InputError(f"--policy: {path}: no such file or directory")
    files = PolicyFiles(paths).files()
    return load_routed_policies(files) if routed else load_policies(files)


def _service(settings: Any, policy_paths: list[Path]) -> tuple[Any, str]:
    """The controller service and its admin token; the token is read first, so that a
    set-up without one opens and writes nothing."""
    from controller.errors import SetupError, StateLockedError  # noqa: PLC0415
    from controller.service import admin_token, build_service  # noqa: PLC0415

    try:
        token = admin_token(settings)
        return build_service(settings, policy_paths), token
    except (SetupError, StateLockedError) as error:
        raise InputError(str(error)) from None


def _serve_metrics(address: str, registry: Any) -> None:
    from prometheus_client import start_http_server  # noqa: PLC0415

    from proxy.server import split_address  # noqa: PLC0415

    try:
        host, port = split_address(address, "--metrics-listen")
        start_http_server(port, host, registry=registry)
    except (ValueError, OSError) as error:
        raise InputError(f"--metrics-listen: {error}") from None
    listening("metrics", f"http://{address}/metrics", host, "no authentication")


def _listening_admin(address: str) -> None:
    from proxy.server import split_address  # noqa: PLC0415

    host, _ = split_address(address, "--admin-listen")
    guard = "every route but /healthz and /readyz needs the admin token"
    listening("admin API and dashboard", f"http://{address}", host, guard)


def _uvicorn(app: Any, address: str, flag: str, *, lifespan: Literal["on", "off"] = "off") -> Any:
    import uvicorn  # noqa: PLC0415

    from proxy.server import split_address  # noqa: PLC0415

    try:
        host, port = split_address(address, flag)
    except ValueError as error:
        raise InputError(str(error)) from None
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http="httptools",
        lifespan=lifespan,
        access_log=False,
        server_header=False,
        date_header=False,
        proxy_headers=False,
        log_level="warning",
        timeout_graceful_shutdown=30,
    )
    return _signal_free(config)


def _signal_free(config: Any) -> Any:
    """A uvicorn server that leaves SIGINT and SIGTERM to ``_serve_all``. uvicorn's own
    handling raises the signal again once it has served, which ends the process before
    the controller stops: the state file left locked, the Lease held until it runs
    out, notifications in the queue lost."""
    import uvicorn  # noqa: PLC0415

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server(config)


def _serve(servers: list[Any], held: HeldSignals, workers: Any = None) -> bool:
    """``_serve_all`` in an event loop of its own; the signals held again once it closed."""
    try:
        return asyncio.run(_serve_all(servers, held, workers))
    finally:
        held.hold()


async def _serve_all(servers: list[Any], held: HeldSignals, workers: Any = None) -> bool:
    """Serve until one server stops (a signal, a failure) or one of the proxy ``workers``
    (a ``WorkerPool``) ends, then stop the others; whether a worker ended. Signals
    ``held`` before the loop ran are served first."""
    loop = asyncio.get_running_loop()

    def stop(sig: signal.Signals) -> None:
        logging.getLogger("coalmine").info("%s: stopping", sig.name)
        for server in servers:
            if server.should_exit and sig is signal.SIGINT:
                server.force_exit = True  # a second Ctrl-C: no more waiting
            server.should_exit = True

    for sig in HELD:
        loop.add_signal_handler(sig, stop, sig)
    for sig in held.take():
        stop(sig)
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    watch = None if workers is None else asyncio.create_task(_first_worker_end(workers))
    await asyncio.wait(
        [*tasks, *([] if watch is None else [watch])], return_when=asyncio.FIRST_COMPLETED
    )
    ended = watch is not None and watch.done()
    if watch is not None:
        watch.cancel()
    for server in servers:
        server.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    return ended


async def _first_worker_end(workers: Any) -> None:
    while (ended := workers.first_ended(0)) is None:
        await asyncio.sleep(0.25)
    ended.process.join(1.0)
    logging.getLogger("coalmine.proxy.workers").error(
        "proxy worker %d (pid %d) ended with exit code %s: stopping",
        ended.index,
        ended.pid,
        ended.process.exitcode,
    )
