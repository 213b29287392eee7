"""`coalmine proxy`: the routing proxy on its own (the data plane)."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from coalmine.cli.errors import InputError
from coalmine.cli.listen import listening
from coalmine.shared.admin_token import weak_token
from coalmine.shared.settings import AdminToken
from policies import Policy, PolicyError, load_policy
from policies.policy_files import PolicyFiles
from policies.policy_set import check_policy_set


def register(app: typer.Typer) -> None:
    """Add the proxy command to the CLI."""

    @app.command("proxy")
    def proxy(  # noqa: PLR0913 (a command's parameters are its flags)
        *,
        policy: Annotated[
            list[Path],
            typer.Option(
                "--policy",
                help="Release policy file or directory of *.yaml files (repeatable: one "
                "release per file); watched and reloaded.",
            ),
        ],
        listen: Annotated[
            str | None,
            typer.Option(help="HOST:PORT for the application's traffic. [default: 127.0.0.1:8080]"),
        ] = None,
        app_url: AppUrlOption = None,
        metrics_listen: Annotated[
            str | None,
            typer.Option(help="HOST:PORT of the Prometheus metrics. [default: 127.0.0.1:9464]"),
        ] = None,
        state: Annotated[
            Path | None,
            typer.Option(help="State file the controller writes routing tables to."),
        ] = None,
        weight: Annotated[
            list[str] | None,
            typer.Option(
                help="Pin a release's canary weight: RELEASE=PCT (repeatable); the state "
                "file is then not read for that release."
            ),
        ] = None,
        spans: Annotated[
            bool,
            typer.Option(
                "--spans/--no-spans",
                help="Report every request to Langfuse as the root span of its trace "
                "(needs LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY).",
            ),
        ] = True,
        log_level: Annotated[
            str, typer.Option(help="Log level: critical, error, warning, info, debug.")
        ] = "info",
        workers: Annotated[
            int,
            typer.Option(
                min=1,
                max=64,
                help="Proxy processes sharing the listening port (SO_REUSEPORT); the "
                "metrics endpoint sums theirs. 1: one process, no supervisor.",
            ),
        ] = 1,
    ) -> None:
        """Route the application's traffic between the stable and canary arms of each
        release, keep each user in one arm, and mirror a sample to staging.

        Settings also come from the environment: COALMINE_LISTEN, COALMINE_APP_URL,
        COALMINE_METRICS_LISTEN, COALMINE_STATE, COALMINE_POLICY_RELOAD_INTERVAL,
        COALMINE_ADMIN_TOKEN (or COALMINE_ADMIN_TOKEN_FILE), and Langfuse's
        LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY, LANGFUSE_BASE_URL. Flags win.
        """
        overrides: dict[str, Any] = {"spans": spans}
        if listen is not None:
            overrides["listen"] = listen
        if app_url is not None:
            overrides["app_url"] = app_url
        if metrics_listen is not None:
            overrides["metrics_listen"] = metrics_listen
        if state is not None:
            overrides["state"] = state
        run_proxy(
            policy_files=policy,
            overrides=overrides,
            pins=parse_weights(weight or []),
            log_level=log_level,
            workers=workers,
        )


AppUrlOption = Annotated[
    str | None,
    typer.Option(
        help="Base URL of the application: where prompt-only releases (no target.upstreams) "
        "are sent. [default: http://127.0.0.1:8000]"
    ),
]


def parse_weights(specs: list[str]) -> dict[str, float]:
    """``RELEASE=PCT`` pins into a dict; InputError names the bad one."""
    pins: dict[str, float] = {}
    for spec in specs:
        name, separator, value = spec.partition("=")
        try:
            percent = float(value)
        except ValueError:
            percent = -1.0
        if not separator or not name or not 0 <= percent <= 100:
            raise InputError(f"--weight: {spec!r} is not RELEASE=PCT with PCT from 0 to 100")
        if name in pins:
            raise InputError(f"--weight: release {name!r} is pinned twice")
        pins[name] = percent
    return pins


def _load_each(files: list[Path]) -> list[tuple[str, Policy]]:
    loaded: list[tuple[str, Policy]] = []
    for file in files:
        try:
            loaded.append((str(file), load_policy(file)))
        except PolicyError as error:
            raise InputError(f"--policy: {error}") from None
        except OSError as error:
            raise InputError(f"--policy: {file}: {error.strerror or error}") from None
    return loaded


def load_policies(files: list[Path]) -> list[Policy]:
    """The policies of ``files``; InputError names the first invalid one."""
    return [policy for _, policy in _load_each(files)]


def load_routed_policies(files: list[Path]) -> list[Policy]:
    """The policies of ``files`` for one proxy to serve; InputError also when two of them
    conflict (the checks of ``coalmine policy validate``)."""
    loaded = _load_each(files)
    conflicts = check_policy_set(loaded)
    if conflicts:
        raise InputError(f"--policy: {conflicts[0]}")
    return [policy for _, policy in loaded]


def watched_paths(paths: list[Path]) -> list[Path]:
    """The ``--policy`` paths, each a file or a directory that exists; InputError names
    the first that does not."""
    if not paths:
        raise InputError("--policy: at least one policy file or directory is needed")
    for path in paths:
        if not path.exists():
            raise InputError(f"--policy: {path}: no such file or directory")
    return paths


PROXY_GUARD = "the application's traffic; a forced arm needs the admin token"


def check_admin_token(settings: AdminToken) -> None:
    """Refuse to start a proxy whose admin token is too weak to guard forced arms (no
    token is fine: every forced arm is then refused)."""
    try:
        token = settings.token()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise InputError(
            f"COALMINE_ADMIN_TOKEN_FILE {settings.admin_token_file}: cannot read the admin "
            f"token: {reason}"
        ) from None
    weakness = None if token is None else weak_token(settings, token)
    if weakness is not None:
        raise InputError(weakness)


def run_proxy(
    *,
    policy_files: list[Path],
    overrides: dict[str, Any],
    pins: dict[str, float],
    log_level: str,
    workers: int = 1,
) -> None:
    # The server stack is imported here, not for every coalmine command.
    from proxy.routes import PolicyFeed  # noqa: PLC0415
    from proxy.server import build_app, serve, split_address  # noqa: PLC0415
    from proxy.settings import ProxySettings  # noqa: PLC0415

    levels = ("critical", "error", "warning", "info", "debug")
    if log_level not in levels:
        raise InputError(f"--log-level: {log_level!r} is not one of {', '.join(levels)}")
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    watched = PolicyFiles(watched_paths(policy_files))
    policies = load_routed_policies(watched.files())
    try:
        settings = ProxySettings(**overrides)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InputError(f"setting {where}: {first['msg']}") from None
    try:
        host, _ = split_address(settings.listen, "--listen")
        metrics_host = None
        if settings.metrics_listen is not None:
            metrics_host, _ = split_address(settings.metrics_listen, "--metrics-listen")
    except ValueError as error:
        raise InputError(str(error)) from None
    check_admin_token(settings)
    check_state_file(settings)
    listening("proxy", f"http://{settings.listen}", host, PROXY_GUARD)
    if metrics_host is not None:
        listening(
            "metrics",
            f"http://{settings.metrics_listen}/metrics",
            metrics_host,
            "no authentication",
        )
    if workers > 1:
        _run_workers(watched, policies, settings, pins, log_level, workers)
        return
    try:
        app = build_app(
            settings,
            policies,
            pins,
            policy_feed=PolicyFeed(watched.reload, watched.kept_out),
        )
    except (ValueError, OSError) as error:
        raise InputError(str(error)) from None
    releases = ", ".join(
        f"{release.name} ({release.prefix}, canary {release.table.canary_weight:g}%"
        f"{' pinned' if release.pinned else ''})"
        for release in app.releases.by_name.values()
    )
    logging.getLogger("coalmine.proxy").info("proxy routes: %s", releases or "no release")
    serve(app, settings)


def _run_workers(
    watched: PolicyFiles,
    policies: list[Policy],
    settings: Any,
    pins: dict[str, float],
    log_level: str,
    workers: int,
) -> None:
    """Serve with ``workers`` processes; a worker that ends ends the command with 1."""
    from proxy.errors import WorkerError  # noqa: PLC0415
    from proxy.workers import WorkerSpec, run_workers  # noqa: PLC0415

    spec = WorkerSpec(
        settings=settings,
        policies=tuple(policies),
        policy_paths=tuple(watched.paths),
        pins=pins,
        log_level=log_level,
    )
    try:
        code = run_workers(spec, workers)
    except (WorkerError, ValueError, OSError) as error:
        raise InputError(str(error)) from None
    if code:
        raise SystemExit(code)


def check_state_file(settings: Any) -> None:
    """Refuse at start a state file that is there but is not coalmine's (not SQLite, or
    damaged): read as it is, it would only give a routing error on every look. A file not
    there yet is fine: the controller creates it, and the proxy routes by its policies'
    initial tables until then."""
    from coalmine.shared.routing_tables.store import (  # noqa: PLC0415
        BadStoreFileError,
        SqliteRoutingStore,
    )

    path = settings.state
    if settings.cluster or path is None or not Path(path).exists():
        return
    if Path(path).is_dir():
        raise InputError(f"state file {path}: is a directory, not a file")
    store = SqliteRoutingStore(Path(path), readonly=True)
    try:
        store.versions()
    except BadStoreFileError as error:
        raise InputError(f"state file {error}") from None
    except sqlite3.OperationalError:
        pass  # no routing table written yet, or the file busy: the refresher reads on
    finally:
        store.close()
