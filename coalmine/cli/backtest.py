"""`coalmine backtest`: a time range of Langfuse history through the judge."""

from __future__ import annotations

import json
import math
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from coalmine.cli.errors import InputError

# The same output as `coalmine replay`, line for line.
from coalmine.cli.replay import _event_json, _print_table, _summary
from coalmine.shared.settings import LangfuseConnection
from controller.backtest import History, LangfuseHistorySource
from controller.errors import BacktestError
from controller.replay import Event, Replay
from controller.source.budget import DEFAULT_PER_MINUTE, BudgetSettings, RequestBudget
from controller.source.langfuse import SourceSettings
from controller.stream import format_ts
from policies.durations import parse_duration
from policies.errors import PolicyError
from policies.loader import load_policy
from policies.model import Policy

EXIT_UNAVAILABLE = 1


def register(app: typer.Typer) -> None:
    """Add the backtest command to the CLI."""

    @app.command()
    def backtest(
        *,
        policy: Annotated[Path, typer.Option(help="Release policy file (YAML).")],
        from_: Annotated[
            str, typer.Option("--from", help="Start of the range, ISO 8601 (no offset: UTC).")
        ],
        to: Annotated[str, typer.Option("--to", help="End of the range, ISO 8601.")],
        as_json: Annotated[
            bool, typer.Option("--json", help="One JSON object per decision, then a summary.")
        ] = False,
        requests_per_minute: Annotated[
            int,
            typer.Option(
                min=1,
                help="Langfuse requests a minute at most (General API bucket; the Hobby "
                "plan allows 30).",
            ),
        ] = DEFAULT_PER_MINUTE,
        window: Annotated[
            str, typer.Option(help="Time range read by each poll of Langfuse, e.g. 10m.")
        ] = "10m",
    ) -> None:
        """Read the release's traces and scores between --from and --to from Langfuse
        and feed them to the judge as `coalmine replay` does: the decisions the
        controller would have made.

        The Langfuse project comes from LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY and
        LANGFUSE_BASE_URL (or LANGFUSE_HOST). A score counts from its timestamp, or from
        when Langfuse created it if that was earlier.
        """
        run_backtest(
            policy,
            start_text=from_,
            end_text=to,
            as_json=as_json,
            requests_per_minute=requests_per_minute,
            window_text=window,
        )


def run_backtest(
    policy_path: Path,
    *,
    start_text: str,
    end_text: str,
    as_json: bool,
    requests_per_minute: int,
    window_text: str,
) -> None:
    try:
        policy = load_policy(policy_path)
    except PolicyError as error:
        raise InputError(str(error)) from None
    start = parse_time(start_text, "--from")
    end = parse_time(end_text, "--to")
    if start >= end:
        raise InputError(f"--from ({start_text}) must be before --to ({end_text})")
    window = _window(window_text)
    if requests_per_minute < 1:
        raise InputError("--requests-per-minute: must be at least 1")
    base_url, public_key, secret_key = _connection()
    budget = RequestBudget(BudgetSettings(per_minute=requests_per_minute))
    with LangfuseHistorySource(
        base_url,
        public_key,
        secret_key,
        budget=budget,
        settings=SourceSettings(max_window=window),
    ) as source:
        history = History(source, policy, start, end, clock=budget.now, on_wait=_waiting)
        engine, events, records = _judge(policy, history)
    if engine.evidence is None:
        raise InputError(
            f"no traces of release {policy.name!r} from {format_ts(start)} to {format_ts(end)}"
        )
    summary = _summary(engine, records)
    if as_json:
        for event in events:
            print(json.dumps(_event_json(event), allow_nan=False))
        print(json.dumps(summary, allow_nan=False))
    else:
        _print_table(engine, events, summary)


def _judge(policy: Policy, history: History) -> tuple[Replay, list[Event], int]:
    """Feed the history to the judge until it decides; stop reading Langfuse then."""
    engine = Replay(policy)
    events: list[Event] = []
    records = 0
    try:
        for record in history.records():
            records += 1
            events.extend(engine.feed(record))
            if engine.finished:
                break
    except BacktestError as error:
        if error.permanent:
            raise InputError(f"Langfuse refused the backtest's request: {error}") from None
        print(f"coalmine: cannot read Langfuse: {error}", file=sys.stderr)
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    events.extend(engine.finish())
    return engine, events, records


def parse_time(text: str, flag: str) -> float:
    """Seconds since the epoch of an ISO 8601 time; without an offset it is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(f"{flag}: {text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _window(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as error:
        raise InputError(f"--window: {error}") from None
    if not 0 < seconds < math.inf:
        raise InputError("--window: must be longer than zero")
    return seconds


def _connection() -> tuple[str, str, str]:
    try:
        settings = LangfuseConnection()
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "settings"
        raise InputError(f"{where}: {first['msg']}") from None
    keys = settings.langfuse_keys()
    if keys is None:
        raise InputError(
            "LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY must be set: the backtest reads "
            "the release's history from that Langfuse project"
        )
    return settings.langfuse_base_url, *keys


def _waiting(seconds: float, why: str) -> None:
    print(f"coalmine: backtest: waiting {seconds:.0f}s ({why})", file=sys.stderr)
