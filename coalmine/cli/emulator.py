"""`coalmine langfuse-emulator`: a local Langfuse-compatible server for tests and demos."""

from __future__ import annotations

import errno
import inspect
import socket
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from coalmine.cli.errors import InputError
from coalmine.emulator.settings import (
    DEFAULT_MAX_BYTES,
    DEFAULT_PUBLIC_KEY,
    DEFAULT_SECRET_KEY,
    EmulatorSettings,
    Plan,
)

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclass(frozen=True, kw_only=True)
class EmulatorFlags:
    """The options of `coalmine langfuse-emulator`, as typer reads them."""

    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1"
    port: Annotated[int, typer.Option(help="Port to listen on; 0 picks a free one.")] = 3000
    public_key: Annotated[
        str | None, typer.Option(help="Public key clients must send (with --secret-key).")
    ] = None
    secret_key: Annotated[
        str | None, typer.Option(help="Secret key clients must send (with --public-key).")
    ] = None
    db: Annotated[
        Path | None,
        typer.Option(help="SQLite file that keeps the data across restarts. Default: memory."),
    ] = None
    plan: Annotated[
        str | None,
        typer.Option(help="Apply the rate limits of this Langfuse Cloud plan: hobby, core, pro."),
    ] = None
    max_mb: Annotated[
        float | None,
        typer.Option(help="Bound on the store's size in MB; past it, writes answer 507."),
    ] = None
    fault: Annotated[
        list[str] | None,
        typer.Option(
            help="Inject a fault, e.g. GET:/api/public/v2/prompts=status:503,rate:0.5 "
            "(repeatable; see docs/emulator.md)."
        ),
    ] = None
    fault_seed: Annotated[
        int, typer.Option(help="Seed of the draws of faults with a rate below 1.")
    ] = 0
    log_level: Annotated[
        str, typer.Option(help="Server log level: critical, error, warning, info, debug.")
    ] = "info"


def _options_of(flags: type[EmulatorFlags]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command taking ``**flags`` the signature of ``flags``' constructor, which
    is where typer reads a command's options from."""

    def give(command: Callable[..., None]) -> Callable[..., None]:
        command.__signature__ = inspect.signature(flags, eval_str=True)  # type: ignore[attr-defined]
        return command

    return give


def register(app: typer.Typer) -> None:
    """Add the langfuse-emulator command to the CLI."""

    @app.command("langfuse-emulator")
    @_options_of(EmulatorFlags)
    def langfuse_emulator(**options: Any) -> None:
        """Serve the Langfuse public API subset coalmine uses (prompts, scores, traces,
        observations, metrics), held to the Langfuse 4.16 OpenAPI spec.

        Prints the base URL and keys, then serves until interrupted. Point the Langfuse
        SDK at it with LANGFUSE_BASE_URL and the printed keys.
        """
        flags = EmulatorFlags(**options)
        settings = _settings(flags)
        run_emulator(settings, host=flags.host, port=flags.port, log_level=flags.log_level)


def run_emulator(settings: EmulatorSettings, *, host: str, port: int, log_level: str) -> None:
    # The server stack is imported here, not for every coalmine command.
    import uvicorn  # noqa: PLC0415

    from coalmine.emulator.app import create_app  # noqa: PLC0415

    if log_level not in LOG_LEVELS:
        raise InputError(f"--log-level: {log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    listener = _listen(host, port)
    try:
        app = create_app(settings)
    except sqlite3.DatabaseError as error:
        listener.close()
        raise InputError(f"--db: {settings.db}: cannot use it as the store ({error})") from None
    bound = listener.getsockname()[1]
    shown_host = f"[{host}]" if ":" in host else host
    print(f"Langfuse emulator on http://{shown_host}:{bound}")
    print(f"  LANGFUSE_BASE_URL=http://{shown_host}:{bound}")
    print(f"  LANGFUSE_PUBLIC_KEY={settings.public_key}")
    print(f"  LANGFUSE_SECRET_KEY={settings.secret_key}")
    print(f"  store: {settings.db or 'memory'}, at most {settings.max_bytes // 1024**2} MB")
    print(f"  rate limits: {settings.plan or 'none'}")
    for spec in settings.faults:
        print(f"  fault: {spec}")
    sys.stdout.flush()
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[listener])


def _settings(flags: EmulatorFlags) -> EmulatorSettings:
    """The emulator's settings from the flags, checked in the order they are listed."""
    public_key, secret_key = _keys(flags.public_key, flags.secret_key)
    plan = _plan(flags.plan)
    max_bytes = _max_bytes(flags.max_mb)
    if flags.db is not None and not flags.db.parent.is_dir():
        raise InputError(f"--db: {flags.db.parent} is not a directory")
    faults = _faults(flags.fault or [])
    return EmulatorSettings(
        public_key=public_key,
        secret_key=secret_key,
        db=flags.db,
        plan=plan,
        max_bytes=max_bytes,
        faults=faults,
        fault_seed=flags.fault_seed,
    )


def _keys(public_key: str | None, secret_key: str | None) -> tuple[str, str]:
    """The key pair given, or the default one."""
    if (public_key is None) != (secret_key is None):
        raise InputError("--public-key and --secret-key go together: give both or neither")
    if public_key is None or secret_key is None:
        return DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY
    if not public_key or ":" in public_key:
        raise InputError("--public-key: must be non-empty and contain no ':'")
    if not secret_key:
        raise InputError("--secret-key: must be non-empty")
    return public_key, secret_key


def _plan(plan: str | None) -> Plan | None:
    if plan is None:
        return None
    try:
        return Plan(plan.lower())
    except ValueError:
        choices = ", ".join(item.value for item in Plan)
        raise InputError(f"--plan: {plan!r} is not one of {choices}") from None


def _max_bytes(max_mb: float | None) -> int:
    if max_mb is None:
        return DEFAULT_MAX_BYTES
    if not max_mb > 0:
        raise InputError(f"--max-mb: {max_mb:g} must be above 0")
    return int(max_mb * 1024 * 1024)


def _faults(specs: list[str]) -> tuple[str, ...]:
    """The fault specs, each checked to parse."""
    from coalmine.emulator.faults import parse_fault  # noqa: PLC0415 (imports FastAPI)

    for spec in specs:
        try:
            parse_fault(spec)
        except ValueError as error:
            raise InputError(f"--fault: {error}") from None
    return tuple(specs)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket, bound before the server starts so that a taken port is a
    one-line input error and port 0 tells which port it got."""
    if not 0 <= port <= 65535:
        raise InputError(f"--port: {port} is not a port number (0-65535)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise InputError(f"--host: cannot resolve {host!r} ({error.strerror})") from None
    family, kind, proto, _, address = infos[0]
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
    except OSError as error:
        listener.close()
        reason = "address already in use" if error.errno == errno.EADDRINUSE else error.strerror
        raise InputError(f"--port: cannot listen on {host}:{port} ({reason})") from None
    listener.listen(2048)
    listener.set_inheritable(True)
    return listener
