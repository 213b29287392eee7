"""`coalmine demo`: a bad prompt rolled back, a good one promoted, traffic mirrored to
staging, or three candidates up the release ladder, end to end on loopback."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from coalmine.cli.errors import InputError
from coalmine.cli.releases import approval_line, rung_line, traffic_line

if TYPE_CHECKING:
    from coalmine.demo.scenarios import Scenario

EXIT_NOT_EXPECTED = 1
DEFAULT_TIMEOUT = 180.0
LADDER_TIMEOUT = 420.0
"""The ladder releases three candidates, one after another."""
RUNGS = ("dataset", "shadow")


def register(app: typer.Typer) -> None:
    """Add the demo command to the CLI."""

    @app.command("demo")
    def demo(
        *,
        scenario: Annotated[
            str, typer.Option(help="bad-canary, good-canary, shadow or ladder.")
        ] = "bad-canary",
        speed: Annotated[
            float,
            typer.Option(help="Compress the policy's durations and raise the traffic by N."),
        ] = 1.0,
        timeout: Annotated[
            float | None,
            typer.Option(
                help="Give up after this many seconds. [default: 180, ladder: 420]",
                show_default=False,
            ),
        ] = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print a final summary object only.")
        ] = False,
    ) -> None:
        """Start the Langfuse emulator, three agents, the proxy and controller, an
        evaluator and users on free loopback ports; run the scenario; report and stop
        everything.

        Exit 0 when the scenario reached its expected outcome, 1 otherwise.
        """
        from coalmine.demo.scenarios import SCENARIOS  # noqa: PLC0415

        chosen = SCENARIOS.get(scenario)
        if chosen is None:
            raise InputError(f"--scenario: {scenario!r} is not one of {', '.join(SCENARIOS)}")
        if not 0.1 <= speed <= 20:
            raise InputError("--speed: must be between 0.1 and 20")
        if timeout is not None and timeout <= 0:
            raise InputError("--timeout: must be positive")
        view = _Progress(quiet=as_json)
        if not as_json:
            print(f"coalmine demo: {chosen.name}: {chosen.summary}")
        from coalmine.demo.processes import StartError  # noqa: PLC0415

        try:
            ok, summary = _run(chosen, speed=speed, timeout=timeout, view=view)
        except StartError as error:
            print(f"coalmine: demo could not start: {error}", file=sys.stderr)
            raise typer.Exit(EXIT_NOT_EXPECTED) from None
        if as_json:
            print(json.dumps(summary, indent=2))
        elif chosen.candidates:
            _report_ladder(summary)
        else:
            _report(summary)
        if not ok:
            raise typer.Exit(EXIT_NOT_EXPECTED)


def _run(
    chosen: Scenario, *, speed: float, timeout: float | None, view: _Progress
) -> tuple[bool, dict[str, Any]]:
    """Run the scenario; whether it ended as expected, and its summary."""
    from coalmine.demo.ladder import run_ladder  # noqa: PLC0415
    from coalmine.demo.run import run_demo  # noqa: PLC0415

    if chosen.candidates:
        ladder = run_ladder(
            chosen,
            speed=speed,
            timeout=LADDER_TIMEOUT if timeout is None else timeout,
            progress=view.update,
            note=view.note,
            on_started=view.started,
        )
        return ladder.ok, ladder.summary()
    result = run_demo(
        chosen,
        speed=speed,
        timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
        progress=view.update,
        on_started=view.started,
    )
    return result.ok, result.summary()


class _Progress:
    """One line per change of phase, weight or decision; metrics every few looks."""

    def __init__(self, *, quiet: bool) -> None:
        self.quiet = quiet
        self.seen_decisions: set[int] = set()
        self.last_state: tuple[Any, ...] | None = None
        self.updates = 0

    def started(self, dashboard: str) -> None:
        if not self.quiet:
            print(f"dashboard: {dashboard} (token in COALMINE_ADMIN_TOKEN of the demo's run)")
            print("users are sending requests through the proxy...")
            sys.stdout.flush()

    def note(self, line: str) -> None:
        if not self.quiet:
            print(f"{_now()}  {line}")
            sys.stdout.flush()

    def _rung(self, detail: dict[str, Any], state: tuple[Any, ...]) -> bool:
        """Print where a rollout at a rung or waiting for approval stands; whether
        that was all there is to say."""
        phase = detail.get("phase")
        changed = state != self.last_state
        if phase == "approval" and changed:
            print(f"{_now()}  approval: {approval_line(detail) or ''}")
        if phase not in RUNGS:
            return False
        if changed or self.updates % 5 == 0:
            line = rung_line(_own_rung(detail)) or ""
            print(f"{_now()}  {phase}: {line}")
            self.last_state = state
        sys.stdout.flush()
        return True

    def update(self, detail: dict[str, Any]) -> None:
        if self.quiet:
            return
        self.updates += 1
        state = (
            detail.get("rollout"),
            detail.get("phase"),
            detail.get("step"),
            detail.get("canaryWeight"),
        )
        for record in sorted(detail.get("decisions") or [], key=lambda record: record["id"]):
            if record["id"] not in self.seen_decisions:
                self.seen_decisions.add(record["id"])
                print(f"{_time(record['at'])}  {_decision(record)}")
        if self._rung(detail, state):
            return
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


def _own_rung(detail: dict[str, Any]) -> dict[str, Any]:
    """The detail without a rung view that is not of its phase and rollout (the view of
    the rung or rollout before, until the new one is first looked at)."""
    view = detail.get("rung") or {}
    if view.get("rung") in (None, detail.get("phase")) and view.get(
        "rollout", detail.get("rollout")
    ) == detail.get("rollout"):
        return detail
    return {**detail, "rung": None}


def _decision(record: dict[str, Any]) -> str:
    """One decision: what, where (the rung of a rung's decision, else the step), why."""
    rung = (record.get("evidence") or {}).get("rung")
    where = f"{rung} rung" if rung else f"step {record['step']}"
    actor = record.get("actor")
    by = f" by {actor}" if actor and actor != "controller" else ""
    return f"{record['decision'].upper():8} {where}{by}  {_short(str(record['reason']), 160)}"


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


def _now() -> str:
    return _time(datetime.now(UTC).timestamp())


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


def _report_ladder(summary: dict[str, Any]) -> None:
    print()
    for rollout in summary["rollouts"]:
        mark = (
            "as expected"
            if rollout["ok"]
            else f"expected {rollout['expected']} at {rollout['expectedRung']}"
        )
        exposed = rollout["canaryRequests"]
        print(
            f"candidate {rollout['candidate']!r} (prompt v{rollout['version']}, rollout "
            f"{rollout['rollout']}): {rollout['outcome']} at the {rollout['rung']} rung"
            f" ({mark})"
        )
        details = [f"user requests on the candidate: {'?' if exposed is None else exposed}"]
        if rollout["seconds"] is not None:
            details.append(f"ended {rollout['seconds']:.0f} s after its version was created")
        if rollout["approvedBy"]:
            details.append(f"approved by {rollout['approvedBy']}")
        if rollout["experiments"]:
            details.append(f"{len(rollout['experiments'])} dataset experiments in Langfuse")
        print("          " + "; ".join(details))
    labels = summary["labels"]
    print(f"labels: production on v{labels.get('production')}, canary on v{labels.get('canary')}")
    for move in summary["labelMoves"]:
        print(
            f"          rollout {move['rollout']}: {move['label']} v{move['fromVersion']} → "
            f"v{move['toVersion']} by {move['actor']}"
        )
    requests = summary["requests"]
    print(f"user requests: {requests.get('sent', 0)} sent, {requests.get('failed', 0)} not 200")
    print(f"took {summary['seconds']:.0f} s; logs: {summary['logs']}")
