"""`coalmine replay`: a recorded sample stream through the judge."""

from __future__ import annotations

import contextlib
import gc
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from coalmine.cli.errors import InputError
from controller.errors import StreamError
from controller.judge import Judgement, MetricResult
from controller.replay import Event, Replay
from controller.stream import format_ts, parse_line
from policies.durations import parse_duration
from policies.errors import PolicyError
from policies.loader import load_policy
from policies.model import Policy


def register(app: typer.Typer) -> None:
    """Add the replay command to the CLI."""

    @app.command()
    def replay(
        policy: Annotated[Path, typer.Option(help="Release policy file (YAML).")],
        samples: Annotated[
            Path, typer.Option(help="Sample stream, JSON Lines; '-' reads standard input.")
        ],
        interval: Annotated[
            str | None,
            typer.Option(help="Time between looks, e.g. 60s. Default: analysis.interval."),
        ] = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="One JSON object per decision, then a summary.")
        ] = False,
    ) -> None:
        """Feed a recorded sample stream to the judge exactly as the controller would.

        Each trace becomes visible at its ts and each late score at its own ts; the judge
        is asked every interval of stream time and the release advances, promotes, rolls
        back or pauses as its decisions say.
        """
        run_replay(policy, samples, interval, as_json)


def run_replay(policy_path: Path, samples: Path, interval: str | None, as_json: bool) -> None:
    engine = Replay(_policy(policy_path), _interval(interval))
    events, lines = _feed(engine, samples)
    events.extend(engine.finish())
    if engine.evidence is None:
        raise InputError(f"{samples}: no samples")
    summary = _summary(engine, lines)
    if as_json:
        for event in events:
            print(json.dumps(_event_json(event), allow_nan=False))
        print(json.dumps(summary, allow_nan=False))
    else:
        _print_table(engine, events, summary)


def _policy(path: Path) -> Policy:
    try:
        return load_policy(path)
    except PolicyError as error:
        raise InputError(str(error)) from None


def _interval(text: str | None) -> float | None:
    """``--interval`` in seconds; None: the policy's ``analysis.interval``."""
    if text is None:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError as error:
        raise InputError(f"--interval: {error}") from None
    if seconds <= 0:
        raise InputError("--interval: must be longer than zero")
    return seconds


def _feed(engine: Replay, samples: Path) -> tuple[list[Event], int]:
    """Every line of the stream through the engine: the events, and the lines read."""
    events: list[Event] = []
    lines = 0
    handle, opened = _open(samples)
    # The evidence keeps every trace, none of them in reference cycles: the cyclic
    # collector would only rescan them, more and more often as the stream grows.
    gc.disable()
    with opened:
        try:
            for lines, text in enumerate(_decoded(handle), start=1):
                record = parse_line(text, lines)
                if record is not None:
                    events.extend(engine.feed(record))
        except StreamError as error:
            raise InputError(f"{samples}:{error.line}: {error.message}") from None
        except UnicodeDecodeError:
            raise InputError(f"{samples}:{lines + 1}: not UTF-8 text") from None
        finally:
            gc.enable()
    return events, lines


def _open(
    samples: Path,
) -> tuple[IO[bytes] | IO[str], contextlib.AbstractContextManager[object]]:
    """The stream to read, and what closes it ('-': standard input, left open).

    Bytes, decoded line by line: a text file decodes whole chunks ahead of the line
    being read, so a bad byte would be reported on the wrong line."""
    if str(samples) == "-":
        return getattr(sys.stdin, "buffer", sys.stdin), contextlib.nullcontext()
    try:
        handle = samples.open("rb")
    except OSError as error:
        raise InputError(f"{samples}: cannot read ({error.strerror})") from None
    return handle, handle


def _decoded(handle: IO[bytes] | IO[str]) -> Iterator[str]:
    for line in handle:
        yield line.decode("utf-8") if isinstance(line, bytes) else line


def _number(value: float | None) -> float | None:
    if value is None or math.isnan(value):
        return None
    if math.isinf(value):
        return None
    return round(value, 6)


def _metric_json(result: MetricResult) -> dict[str, Any]:
    return {
        "name": result.name,
        "verdict": result.verdict.value,
        "estimate": _number(result.estimate),
        "lower": _number(result.lower),
        "upper": _number(result.upper),
        "scale": result.scale.value,
        "n_baseline": result.n_baseline,
        "n_canary": result.n_canary,
        "e_value": _number(math.exp(min(result.log_evalue, 700.0))),
        "e_threshold": _number(math.exp(result.log_threshold)),
        "worst_traces": list(result.worst_traces),
        "reason": result.reason,
    }


def _event_json(event: Event) -> dict[str, Any]:
    judgement = event.judgement
    return {
        "ts": format_ts(judgement.at),
        "decision": judgement.decision.value,
        "phase": event.phase.value,
        "step": event.step,
        "reason": judgement.reason,
        "metrics": [_metric_json(m) for m in judgement.metrics],
        "checks": [
            {"name": c.name, "state": c.state.value, "reason": c.reason} for c in judgement.checks
        ],
    }


def _summary(engine: Replay, lines: int) -> dict[str, Any]:
    decided = engine.decided
    last = engine.last
    if decided is not None:
        reason = decided.reason
    elif last is not None:
        reason = last.reason
    else:
        reason = "the stream ended before the first look"
    counters = engine.counters
    return {
        "final": True,
        "outcome": engine.outcome(),
        "decided_at": format_ts(decided.at) if decided is not None else None,
        "reason": reason,
        "step": engine.step + 1,
        "steps": len(engine.policy.steps),
        "lines": lines,
        "traces": counters.traces,
        "late_score_lines": counters.late_score_lines,
        "out_of_order_lines": counters.out_of_order,
        "looks": counters.looks,
    }


def _print_table(engine: Replay, events: list[Event], summary: dict[str, Any]) -> None:
    steps = len(engine.policy.steps)
    print(f"release {engine.policy.name}: {summary['lines']} lines, {summary['looks']} looks")
    for event in events:
        _print_judgement(event.judgement, f"{event.step}/{steps}", event.phase.value)
    if engine.decided is None and engine.last is not None:
        _print_judgement(engine.last, f"{engine.step + 1}/{steps}", "last look")
    when = summary["decided_at"] or "-"
    print(f"\noutcome: {summary['outcome']} at {when}: {summary['reason']}")


def _print_judgement(judgement: Judgement, step: str, phase: str) -> None:
    print(
        f"\n{format_ts(judgement.at)}  step {step}  {judgement.decision.value}  ({phase}): "
        f"{judgement.reason}"
    )
    print(
        f"  {'metric':<16} {'verdict':<13} {'estimate':>10} {'lower':>10} {'upper':>10} "
        f"{'n_canary':>9} {'n_baseline':>10}"
    )
    for m in judgement.metrics:
        print(
            f"  {m.name:<16} {m.verdict.value:<13} {_fmt(m.estimate):>10} {_fmt(m.lower):>10} "
            f"{_fmt(m.upper):>10} {m.n_canary:>9} {m.n_baseline:>10}"
        )


def _fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.4g}"
