"""`coalmine status [RELEASE]` and `coalmine promote|rollback|pause|resume|approve RELEASE`: the
controller's admin API, from a terminal.

Exit status: 0 on success; 2 when the request is wrong (no token, token refused, no such
release, an action that does not apply to the release as it stands); 1 when the admin API
cannot be reached or fails.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, NoReturn
from urllib.parse import quote, urlsplit

import httpx
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from coalmine.cli.errors import InputError

DEFAULT_ADMIN_URL: Final = "http://127.0.0.1:9465"
EXIT_UNAVAILABLE: Final = 1
READ_TIMEOUT: Final = 10.0
ACTION_TIMEOUT: Final = 60.0
"""A manual action waits for the controller's current tick, then moves labels."""
SHOWN_DECISIONS: Final = 10

ACTIONS: Final = {
    "promote": "Promote RELEASE now: the candidate becomes stable.",
    "rollback": "Roll RELEASE back now: the canary gets no more traffic, labels go back.",
    "pause": "Pause RELEASE: its weights stay, the controller stops judging it.",
    "resume": "Resume a paused RELEASE.",
    "start": "Start RELEASE's next rollout now, with the candidate its target names (also "
    "one a rollout has already judged).",
    "approve": "Approve RELEASE's rollout waiting for approval (policy `approval`): it is "
    "promoted.",
}

AdminUrl = Annotated[
    str,
    typer.Option(
        "--admin-url",
        envvar="COALMINE_ADMIN_URL",
        help="The controller's admin API.",
    ),
]
TokenFile = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        help="File holding the admin token. Default: env COALMINE_ADMIN_TOKEN, then the "
        "file named by COALMINE_ADMIN_TOKEN_FILE.",
        dir_okay=False,
        show_default=False,
    ),
]
Reason = Annotated[
    str, typer.Option("--reason", help="Why, for the decision log and notifications.")
]
By = Annotated[
    str | None,
    typer.Option(
        "--by",
        help="Who asks, recorded as the actor of the decision and its label moves. Default: $USER.",
        show_default=False,
    ),
]


def register(app: typer.Typer) -> None:
    """Add status, promote, rollback, pause, resume, start and approve to the CLI."""

    @app.command("status")
    def status(
        release: Annotated[
            str | None,
            typer.Argument(
                help="One release in detail; all releases when left out.",
                metavar="[RELEASE]",
                show_default=False,
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="The admin API's JSON.")] = False,
        admin_url: AdminUrl = DEFAULT_ADMIN_URL,
        token_file: TokenFile = None,
    ) -> None:
        """Show where releases stand: phase, step, canary weight, and for one release its
        metrics at the last look and its last decisions."""
        with AdminClient(admin_url, resolve_token(token_file)) as client:
            if release is None:
                answer = client.get("/releases")
                if as_json:
                    print(json.dumps(answer, indent=2))
                else:
                    print_releases(answer.get("releases", []))
                    print_langfuse_reads(answer, answer.get("releases", []))
                return
            detail = client.get(f"/releases/{quote(release, safe='')}")
        if as_json:
            print(json.dumps(detail, indent=2))
        else:
            print_release(detail)
            print_langfuse_reads(detail, [detail])

    for action, summary in ACTIONS.items():
        _register_action(app, action, summary)


def _register_action(app: typer.Typer, action: str, summary: str) -> None:
    @app.command(action, help=summary)
    def run(
        release: Annotated[
            str, typer.Argument(help="The release (its policy's name).", metavar="RELEASE")
        ],
        reason: Reason = "",
        by: By = None,
        admin_url: AdminUrl = DEFAULT_ADMIN_URL,
        token_file: TokenFile = None,
    ) -> None:
        who = os.environ.get("USER", "") if by is None else by
        body = {key: value for key, value in (("reason", reason), ("by", who)) if value} or None
        with AdminClient(admin_url, resolve_token(token_file)) as client:
            answer = client.post(f"/releases/{quote(release, safe='')}/{action}", body)
        print(
            f"release {answer['name']}, rollout {_rollout(answer)}: {answer['phase']}, "
            f"canary {answer['canaryWeight']:g}%"
        )


# -- the admin API ------------------------------------------------------------------------


def resolve_token(token_file: Path | None) -> str:
    """The admin token: ``--token-file``, else COALMINE_ADMIN_TOKEN, else the file named
    by COALMINE_ADMIN_TOKEN_FILE."""
    if token_file is not None:
        return _read_token(token_file, "--token-file")
    token = os.environ.get("COALMINE_ADMIN_TOKEN", "").strip()
    if token:
        return token
    named = os.environ.get("COALMINE_ADMIN_TOKEN_FILE", "").strip()
    if named:
        return _read_token(Path(named), "COALMINE_ADMIN_TOKEN_FILE")
    raise InputError(
        "no admin token: give --token-file, or set COALMINE_ADMIN_TOKEN or "
        "COALMINE_ADMIN_TOKEN_FILE"
    )


def _read_token(path: Path, where: str) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise InputError(f"{where}: cannot read {path}: {reason}") from None
    if not token:
        raise InputError(f"{where}: {path} is empty")
    return token


class AdminClient:
    """A client of the admin API that turns every failure into a one-line reason."""

    def __init__(
        self, url: str, token: str, *, transport: httpx.BaseTransport | None = None
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"--admin-url: {url!r} is not an http or https URL")
        self.url = url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=READ_TIMEOUT,
            transport=transport,
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def get(self, path: str) -> dict[str, Any]:
        return self._send("GET", path, None, READ_TIMEOUT)

    def post(self, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        return self._send("POST", path, body, ACTION_TIMEOUT)

    def _send(
        self, method: str, path: str, body: dict[str, Any] | None, timeout: float
    ) -> dict[str, Any]:
        try:
            response = self._client.request(method, path, json=body, timeout=timeout)
        except httpx.ConnectError as error:
            _unavailable(f"cannot reach the admin API at {self.url}: {_why(error)}")
        except httpx.TimeoutException:
            _unavailable(f"the admin API at {self.url} did not answer within {timeout:g}s")
        except httpx.HTTPError as error:
            _unavailable(f"admin API at {self.url}: {_why(error)}")
        payload = _json(response)
        if response.is_success and isinstance(payload, dict):
            return payload
        message = _message(payload) or f"HTTP {response.status_code}"
        if response.status_code == 401:
            raise InputError(f"admin token refused by {self.url}")
        if response.status_code in (404, 409, 422):
            raise InputError(message)
        if response.is_success:
            _unavailable(f"{self.url}{path}: the answer is not the admin API's JSON")
        _unavailable(f"admin API at {self.url}: HTTP {response.status_code}: {message}")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _message(payload: Any) -> str | None:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        message = payload["error"].get("message")
        return str(message) if message else None
    return None


def _why(error: httpx.HTTPError) -> str:
    # httpx wraps the socket error; its text ("[Errno 111] Connection refused") is the cause
    text = str(error) or type(error).__name__
    return text.split("] ", 1)[-1].lower() if text.startswith("[Errno") else text


def _unavailable(message: str) -> NoReturn:
    print(f"coalmine: {message}", file=sys.stderr)
    raise typer.Exit(EXIT_UNAVAILABLE)


# -- rendering ----------------------------------------------------------------------------


RUNNING_PHASES: Final = ("canary", "paused")


def print_langfuse_reads(answer: dict[str, Any], releases: list[dict[str, Any]]) -> None:
    """When Langfuse reads are not ok: one line per running release and the verdict's
    sentence; then every score type mismatch of a running rollout."""
    console = _console()
    reads = answer.get("langfuseReads")
    running = [r["name"] for r in releases if r.get("phase") in RUNNING_PHASES]
    if isinstance(reads, dict) and reads.get("verdict") not in (None, "ok") and running:
        verdict = str(reads["verdict"]).replace("_", " ")
        lag = reads.get("lagSeconds")
        behind = "" if lag is None else f", read up to {lag:.0f}s before now"
        console.print()
        for name in running:
            console.print(f"{name}: Langfuse reads {verdict}{behind}")
        console.print(reads.get("message", ""), soft_wrap=True)
    mismatches = answer.get("scoreTypeMismatches") or []
    if mismatches:
        console.print()
    for mismatch in mismatches:
        console.print(
            f"{mismatch['release']}: score type mismatch: {mismatch['message']}", soft_wrap=True
        )


def _console() -> Console:
    # markup off: reasons and bounds hold square brackets that are not rich markup
    return Console(highlight=False, markup=False)


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _step(release: dict[str, Any]) -> str:
    step, steps = release.get("step"), release.get("steps")
    if step is None:
        return "-"
    return f"{step}/{steps}" if steps is not None else str(step)


def print_releases(releases: list[dict[str, Any]]) -> None:
    """The releases table of ``coalmine status``."""
    console = _console()
    if not releases:
        console.print("no releases")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("RELEASE", "ROLLOUT", "PHASE", "STEP", "CANARY", "STARTED", "UPDATED", "REASON"):
        table.add_column(column, overflow="fold")
    for release in releases:
        table.add_row(
            release["name"],
            _rollout(release),
            release["phase"],
            _step(release),
            f"{release['canaryWeight']:g}%",
            _time(release.get("startedAt")),
            _time(release.get("updatedAt")),
            approval_line(release) or release.get("waiting") or release.get("reason") or "",
        )
    console.print(table)


def _rollout(release: dict[str, Any]) -> str:
    rollout = release.get("rollout")
    return "-" if not rollout else f"#{rollout}"


def traffic_line(traffic: dict[str, Any]) -> str:
    """Where a release's requests are counted, and its score sample, in one line."""
    if traffic.get("countedBy") == "proxies":
        proxies = traffic.get("proxies") or []
        counted = (
            f"requests counted by {len(proxies)} prox{'y' if len(proxies) == 1 else 'ies'}"
            if proxies
            else "requests counted by no proxy yet"
        )
        if traffic.get("lateRequests"):
            counted += f" ({traffic['lateRequests']} counted too late to judge)"
    else:
        counted = "requests counted from the traces read in Langfuse"
    entries = traffic.get("scoreSample") or []
    sample = "scores read for every request"
    if entries:
        rates = ", then ".join(
            f"{100 * entry['rate']:.3g}% from {_time(entry['from'])}" for entry in entries
        )
        sample = f"score sample {rates}"
    return f"traffic: {counted}; {sample}"


def rung_line(detail: dict[str, Any]) -> str | None:
    """Where a rollout stands on its ladder and what its rung says (None: no ladder
    to speak of, or past its rungs)."""
    ladder = detail.get("ladder") or []
    rung = detail.get("rung")
    if len(ladder) < 2 and not rung:
        return None
    line = "ladder: " + " → ".join(ladder)
    if rung:
        since = _time(detail.get("rungSince"))
        outcome = rung.get("outcome") or "running"
        line += f"; {rung['rung']} rung since {since}, {outcome}: {rung.get('reason', '')}"
        unscored = rung.get("unscored")
        if isinstance(unscored, dict) and unscored.get("count"):
            ids = ", ".join(str(item) for item in unscored.get("itemIds") or [])
            more = unscored["count"] - len(unscored.get("itemIds") or [])
            listed = f" ({ids}{f' and {more} more' if more > 0 else ''})" if ids else ""
            line += f"\nunscored items: {unscored['count']}{listed}"
    return line


def approval_line(release: dict[str, Any]) -> str | None:
    """Since when a rollout waits for approval and what happens without it (None: it
    does not wait)."""
    approval = release.get("approval")
    if not approval:
        return None
    then = "paused" if approval["onTimeout"] == "pause" else "rolled back"
    verb = "waits" if release.get("phase") == "approval" else "waited (now paused)"
    queue = approval.get("queue")
    reviewed = (
        f" or a review of its {approval.get('reviewTraces', 0)} traces in Langfuse "
        f"annotation queue '{queue}'"
        if queue
        else ""
    )
    return (
        f"{verb} for approval since {_time(approval['since'])}: "
        f"`coalmine approve {release['name']}`{reviewed}; without it {then} at "
        f"{_time(approval['timeoutAt'])}"
    )


def _print_policy(console: Console, detail: dict[str, Any]) -> None:
    if detail.get("policyDigest"):
        edited = (
            " (edited since this rollout started: the edit's steps and analysis apply from "
            "the next rollout)"
            if detail.get("policyEdited")
            else ""
        )
        console.print(f"policy in force: {detail['policyDigest']}{edited}")


def _print_candidate(console: Console, detail: dict[str, Any]) -> None:
    if detail.get("candidate"):
        console.print(f"candidate: {detail['candidate']}")
    if detail.get("stableVersion") is not None or detail.get("candidateVersion") is not None:
        console.print(
            f"prompt versions: stable {detail.get('stableVersion')}, "
            f"candidate {detail.get('candidateVersion')}"
        )


def print_release(detail: dict[str, Any]) -> None:
    """One release in detail: where it stands, its metrics, its last decisions."""
    console = _console()
    title = Text(f"release {detail['name']}", style="bold")
    rollout = f", rollout {_rollout(detail)}" if detail.get("rollout") else ", no rollout yet"
    title.append(
        f"{rollout}: {detail['phase']}, step {_step(detail)}, canary {detail['canaryWeight']:g}%"
    )
    console.print(title)
    if detail.get("waiting"):
        console.print(detail["waiting"])
    for line in (rung_line(detail), approval_line(detail)):
        if line:
            console.print(line)
    _print_policy(console, detail)
    _print_candidate(console, detail)
    console.print(
        f"started {_time(detail.get('startedAt'))}, updated {_time(detail.get('updatedAt'))}"
    )
    if detail.get("reason"):
        console.print(f"reason: {detail['reason']}")
    if detail.get("resumePhase"):
        console.print(f"resumes to: {detail['resumePhase']}")
    traffic = detail.get("traffic")
    if traffic:
        console.print(traffic_line(traffic))
    judgement = detail.get("judgement")
    if judgement:
        _print_judgement(console, judgement, detail.get("judgementSource"))
    else:
        console.print("metrics: no look yet")
    pending = detail.get("pendingActions") or []
    if pending:
        console.print(f"pending actions: {len(pending)}")
        for action in pending:
            console.print(f"  {action['kind']} {json.dumps(action['intent'], sort_keys=True)}")
    _print_decisions(console, detail.get("decisions") or [])


def _print_judgement(console: Console, judgement: dict[str, Any], source: str | None) -> None:
    origin = " (from the decision log)" if source == "decision-log" else ""
    console.print(
        f"\nlast look {_time(judgement.get('at'))}{origin}: {judgement.get('decision')}: "
        f"{judgement.get('reason', '')}"
    )
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("METRIC", "VERDICT", "ESTIMATE", "[LOWER, UPPER]", "BASELINE", "CANARY"):
        justify: Any = "right" if column in ("ESTIMATE", "BASELINE", "CANARY") else "left"
        table.add_column(column, justify=justify, overflow="fold")
    for metric in judgement.get("metrics", []):
        estimate = metric.get("estimate")
        scale = metric.get("scale", "difference")
        if estimate is None:
            bounds = "-"
        else:
            lower = _number(metric.get("lower"), scale, "-inf")
            upper = _number(metric.get("upper"), scale, "inf")
            bounds = f"[{lower}, {upper}]"
        table.add_row(
            metric["name"],
            metric["verdict"],
            _number(estimate, scale, "-"),
            bounds,
            str(metric.get("nBaseline", 0)),
            str(metric.get("nCanary", 0)),
        )
    console.print(table)
    for check in judgement.get("checks", []):
        if check.get("state") != "ok":
            console.print(f"check {check['name']}: {check['state']}: {check.get('reason', '')}")


def _number(value: float | None, scale: str, missing: str) -> str:
    """An estimate or bound: a difference as a signed number, a ratio as a percentage."""
    if value is None:
        return missing
    if scale == "ratio":
        return f"{(value - 1.0) * 100:+.1f}%"
    return f"{value:+.4g}"


def _print_decisions(console: Console, decisions: list[dict[str, Any]]) -> None:
    if not decisions:
        return
    console.print("\nlast decisions")
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("TIME", "ROLLOUT", "DECISION", "STEP", "ACTOR", "REASON"):
        table.add_column(column, overflow="fold")
    for record in decisions[-SHOWN_DECISIONS:]:
        table.add_row(
            _time(record.get("at")),
            _rollout(record),
            record["decision"],
            str(record.get("step", "")),
            record.get("actor", ""),
            record.get("reason", ""),
        )
    console.print(table)
