"""`coalmine demo`: a bad prompt rolled back, a good one promoted, or traffic mirrored to
staging, end to end on loopback."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from coalmine.cli.errors import InputError
from coalmine.cli.releases import traffic_line

EXIT_NOT_EXPECTED = 1


def register(app: typer.Typer) -> None:
    """Add the demo command to the CLI."""

    @app.command("demo")
    def demo(
        *,
        scenario: Annotated[
            str, typer.Option(help="bad-canary, good-canary or shadow.")
        ] = "bad-canary",
        speed: Annotated[
            float,
            typer.Option(help="Compress the policy's durations and raise the traffic by N."),
        ] = 1.0,
        timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 180.0,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print a final summary object only.")
        ] = False,
    ) -> None:
        """Start the Langfuse emulator, three agents, the proxy and controller, an
        evaluator and users on free loopback ports; run the scenario; report and stop
        everything.

        Exit 0 when the scenario reached its expected outcome, 1 otherwise.
        """
        from coalmine.demo.run import run_demo  # noqa: PLC0415
        from coalmine.demo.scenarios import SCENARIOS  # noqa: PLC0415

        chosen = SCENARIOS.get(scenario)
        if chosen is None:
            raise InputError(f"--scenario: {scenario!r} is not one of {', '.join(SCENARIOS)}")
        if not 0.1 <= speed <= 20:
            raise InputError("--speed: must be between 0.1 and 20")
        if timeout <= 0:
            raise InputError("--timeout: must be positive")
        view = _Progress(quiet=as_json)
        if not as_json:
            print(f"coalmine demo: {chosen.name}: {chosen.summary}")
        from coalmine.demo.processes import StartError  # noqa: PLC0415

        try:
            result = run_demo(
                chosen,
                speed=speed,
                timeout=timeout,
                progress=view.update,
                on_started=view.started,
            )
        except StartError as error:
            print(f"coalmine: demo could not start: {error}", file=sys.stderr)
            raise typer.Exit(EXIT_NOT_EXPECTED) from None
        if as_json:
            print(json.dumps(result.summary(), indent=2))
        else:
            _report(result.summary())
        if not result.ok:
            raise typer.Exit(EXIT_NOT_EXPECTED)


class _Progress:
    """One line per change of phase, weight or decision; metrics every few looks."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.seen_decisions = 0
        self.last_state: tuple[Any, ...] | None = None
        self.updates = 0

    def started(self, dashboard: str) -> None:
        if not self.quiet:
            print(f"dashboard: {dashboard} (token in COALMINE_ADMIN_TOKEN of the demo's run)")
            print("users are sending requests through the proxy...")
            sys.stdout.flush()

    def update(self, detail: dict[str, Any]) -> None:
        if self.quiet:
            return
        self.updates += 1
        state = (detail.get("phase"), detail.get("step"), detail.get("canaryWeight"))
        decisions = detail.get("decisions") or []
        for record in decisions[self.seen_decisions :]:
            print(
                f"{_time(record['at'])}  {record['decision'].upper():8} step {record['step']}"
                f"  {record['reason']}"
            )
        self.seen_decisions = len(decisions)
        judgement = detail.get("judgement") or {}
        if state != self.last_state or self.updates % 5 == 0:
            metrics = "  ".join(_metric(metric) for metric in judgement.get("metrics", []))
            where = (
                f"step {detail.get('step')}/{detail.get('steps')}"
                if detail.get("step") is not None
                else "no candidate to judge"
            )
            print(
                f"{_time(judgement.get('at') or detail.get('updatedAt'))}  "
                f"{detail.get('phase')}, {where}, canary "
                f"{detail.get('canaryWeight', 0):g}%  {metrics}".rstrip()
            )
            counted = [
                check["reason"]
                for check in judgement.get("checks", [])
                if check.get("name") == "traffic" and "counted by the proxies" in check["reason"]
            ]
            if counted:
                print(f"          step traffic: {counted[0]}")
            if detail.get("traffic"):
                print(f"          {traffic_line(detail['traffic'])}")
            if judgement.get("decision") == "continue" and judgement.get("reason"):
                print(f"          {_short(judgement['reason'])}")
            self.last_state = state
        sys.stdout.flush()


def _short(text: str, limit: int = 110) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _metric(metric: dict[str, Any]) -> str:
    estimate, lower, upper = metric.get("estimate"), metric.get("lower"), metric.get("upper")
    if estimate is None:
        return f"{metric['name']}: {metric['verdict']}"
    bounds = f"[{_num(lower)}, {_num(upper)}]"
    return f"{metric['name']} {_num(estimate)} {bounds} {metric['verdict']}"


def _num(value: Any) -> str:
    return "?" if value is None else f"{value:+.3g}"


def _time(at: Any) -> str:
    if not isinstance(at, int | float):
        return "--:--:--"
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S")


def _report(summary: dict[str, Any]) -> None:
    print()
    mark = "as expected" if summary["ok"] else f"expected {summary['expected']}"
    print(f"outcome: {summary['outcome']} ({mark})")
    if summary["seconds_to_decide"] is not None:
        print(f"decided after {summary['seconds_to_decide']:.0f} s")
    samples = summary["samples"]
    arms = ", ".join(f"{arm} {samples.get(arm, 0)}" for arm in ("baseline", "canary", "shadow"))
    print(f"traces in Langfuse (emulator): {arms}")
    labels = summary["labels"]
    print(f"labels: production on v{labels.get('production')}, canary on v{labels.get('canary')}")
    requests = summary["requests"]
    print(f"user requests: {requests.get('sent', 0)} sent, {requests.get('failed', 0)} not 200")
    print(f"logs: {summary['logs']}")
