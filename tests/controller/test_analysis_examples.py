"""The Argo Rollouts and Flagger examples in ``deploy/``, run against a real controller
reading the Langfuse emulator: the files are parsed as the two controllers parse them,
their requests are sent to the admin API, and the answers are judged as they judge them
(Argo: ``jsonPath`` and the expr-lang success and failure conditions, each measurement
counted against the metric's limits; Flagger: a gate passes on 200 to 202).

The emulator's traffic is the application's: each request tagged with the release and
the arm of the pod that served it, split by the weight the external rollout has set,
and scored by an evaluator. A bad canary must end ``Failed`` (Argo aborts the Rollout)
and rolled back (Flagger); a good one ``Successful`` at every step and promoted. Time is
a fake clock that moves only when the test says.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from coalmine.emulator.settings import EmulatorSettings
from coalmine.shared.conventions import trace_tags
from coalmine.shared.routing_tables.store import SqliteRoutingStore
from controller.admin import create_admin_app
from controller.labels import LangfusePromptLabels
from controller.loop import Controller
from controller.release_store import ControllerState
from controller.source.budget import BudgetSettings, RequestBudget
from controller.source.langfuse import LangfuseSource
from policies import Policy, load_policy
from policies.domain import Arm, Phase
from tests.controller.source_support import (
    SCORES,
    FakeClock,
    app_span,
    iso,
    live_emulator,
    send_spans,
)

pytestmark = pytest.mark.slow

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ARGO = DEPLOY / "argo-rollouts"
FLAGGER = DEPLOY / "flagger"
TOKEN = "an-admin-token-of-32-characters-or-more"
SECRETS = {("coalmine-admin-token", "token"): TOKEN}
"""The Secret the chart generates, as the AnalysisTemplate's token argument names it."""
TOKEN_PLACEHOLDER = "REPLACE_WITH_ADMIN_TOKEN"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def the(kind: str, path: Path) -> dict[str, Any]:
    (found,) = [doc for doc in documents(path) if doc["kind"] == kind]
    return found


def seconds(duration: str) -> float:
    """A Kubernetes-style duration, ``30s``, ``1m``, ``2h``."""
    match = re.fullmatch(r"(\d+)(s|m|h)", duration)
    assert match is not None, duration
    return int(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]]


def start_time() -> float:
    """Midnight UTC the day after tomorrow: the emulator stamps scores with its wall
    clock, and fake time ahead of it keeps every score created before its trace is
    read, so what the judge sees depends on fake time alone."""
    return (int(time.time()) // 86_400 + 2) * 86_400.0


# -- the world: the application's traffic, Langfuse, coalmine --------------------------------


@dataclass
class World:
    """One release's traffic into the emulator, split by ``weight`` (what the external
    rollout has set), and a coalmine controller reading it; ``admin`` is its admin API."""

    clock: FakeClock
    http: httpx.Client
    controller: Controller
    state: ControllerState
    admin: TestClient
    release: str
    canary_score: float = 0.8
    canary_error: float = 0.01
    rate: int = 60
    """Requests a minute."""
    weight: float = 0.0
    _random: random.Random = field(default_factory=lambda: random.Random(17))
    _traces: int = 0
    _written_until: float | None = None
    _ticked: float | None = None

    def advance(self, seconds: float) -> None:
        """Time passes: the requests of that time reach Langfuse; coalmine ticks once a
        minute (its analysis interval), as its scheduler does."""
        self.clock.advance(seconds)
        self._write_traffic()
        if self._ticked is None or self.clock.now - self._ticked >= 60.0:
            self.controller.tick(self.clock.now)
            self._ticked = self.clock.now

    def phase(self) -> Phase:
        release = self.state.release(self.release)
        assert release is not None
        return release.phase

    def decisions(self) -> list[str]:
        return [record.decision for record in self.state.decisions(self.release)]

    def _write_traffic(self) -> None:
        now = self.clock.now
        since = self._written_until if self._written_until is not None else now - 60.0
        self._written_until = now
        spans = []
        scores = []
        for _ in range(int(self.rate * (now - since) / 60.0)):
            self._traces += 1
            ts = since + self._random.random() * (now - since - 1.0)
            arm = Arm.CANARY if self._random.random() * 100 < self.weight else Arm.BASELINE
            error = self._random.random() < (self.canary_error if arm is Arm.CANARY else 0.01)
            tags = trace_tags(self.release, arm)
            spans.append(
                app_span(
                    self._traces,
                    self._traces,
                    ts,
                    0.4,
                    tags,
                    is_root=True,
                    generation=False,
                    level="ERROR" if error else None,
                )
            )
            if not error:
                mean = self.canary_score if arm is Arm.CANARY else 0.8
                value = min(1.0, max(0.0, self._random.gauss(mean, 0.1)))
                scores.append(
                    {
                        "traceId": f"{self._traces:032x}",
                        "name": "helpfulness",
                        "value": value,
                        "timestamp": iso(ts + 2.0),
                    }
                )
        if spans:
            send_spans(self.http, spans)
        if scores:
            sent = self.http.post(SCORES, json=scores)
            assert sent.status_code == 202, sent.text


WorldFactory = Callable[[Path], World]


@pytest.fixture
def make_world(tmp_path: Path) -> Iterator[WorldFactory]:
    """A world for the policy file at the given path."""
    keys = uuid.uuid4().hex[:8]
    settings = EmulatorSettings(public_key=f"pk-lf-{keys}", secret_key=f"sk-lf-{keys}")
    clock = FakeClock(start_time())
    closing: list[Callable[[], None]] = []
    with live_emulator(settings, clock=clock) as emulator, emulator.client() as http:

        def make(policy_file: Path) -> World:
            policy = load_policy(policy_file)
            policies: dict[str, Policy] = {policy.name: policy}
            state = ControllerState(tmp_path / "state.db")
            routing = SqliteRoutingStore(tmp_path / "state.db")
            budget = RequestBudget(BudgetSettings(per_minute=100_000), clock=clock)
            keys = (emulator.base_url, settings.public_key, settings.secret_key)
            source = LangfuseSource(*keys, budget=budget, rng=random.Random(3))
            labels = LangfusePromptLabels(*keys, budget=budget)
            controller = Controller(
                state=state,
                routing=routing,
                source=source,
                labels=labels,
                policies=lambda: policies,
            )
            admin = TestClient(create_admin_app(controller, token=TOKEN, clock=clock))
            closing.extend([admin.close, source.close, labels.close, routing.close, state.close])
            return World(clock, http, controller, state, admin, policy.name)

        try:
            yield make
        finally:
            for close in closing:
                close()


# -- Argo Rollouts: JSONPath, expr-lang conditions, an AnalysisRun's limits ------------------


def json_path(document: Any, path: str) -> Any:
    """Argo's ``jsonPath`` (Kubernetes JSONPath) for the forms ``{$}``, ``{$.a.b}``,
    ``{$.a[0]}``: the first value found."""
    match = re.fullmatch(r"\{\$((?:\.[A-Za-z_][\w-]*|\[\d+\])*)\}", path)
    assert match is not None, f"unsupported jsonPath {path!r}"
    value = document
    for name, index in re.findall(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]", match[1]):
        value = value[name] if name else value[int(index)]
    return value


TOKEN_PATTERN = re.compile(
    r"""\s*(?:(?P<number>\d+\.\d+|\d+)|(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
    r"""|(?P<op>==|!=|<=|>=|&&|\|\||[<>!()\[\].,])|(?P<name>[A-Za-z_]\w*))"""
)


class Expr:
    """The part of expr-lang (github.com/expr-lang/expr) that conditions over ``result``
    use: literals (strings, numbers, true, false, nil, arrays), ``result.field``,
    ``result[0]``, comparisons, ``in``, ``not in``, ``!``/``not``, ``&&``/``and``,
    ``||``/``or`` and parentheses, with expr-lang's precedence. Anything else raises,
    as expr-lang's compile or run error would (an Argo measurement ``Error``)."""

    def __init__(self, source: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        position = 0
        while source[position:].strip():
            match = TOKEN_PATTERN.match(source, position)
            if match is None:
                raise ValueError(f"cannot read {source[position:]!r}")
            kind = match.lastgroup
            assert kind is not None
            self.tokens.append((kind, match[kind]))
            position = match.end()
        self.at = 0

    def evaluate(self, env: dict[str, Any]) -> Any:
        self.at = 0
        value = self._or(env)
        if self.at != len(self.tokens):
            raise ValueError(f"unexpected {self.tokens[self.at][1]!r}")
        return value

    def _peek(self) -> str | None:
        return self.tokens[self.at][1] if self.at < len(self.tokens) else None

    def _take(self, *texts: str) -> str | None:
        if self._peek() in texts:
            self.at += 1
            return self.tokens[self.at - 1][1]
        return None

    def _expect(self, text: str) -> None:
        if self._take(text) is None:
            raise ValueError(f"expected {text!r}, got {self._peek()!r}")

    def _or(self, env: dict[str, Any]) -> Any:
        value = self._and(env)
        while self._take("||", "or"):
            right = self._and(env)
            value = _boolean(value) or _boolean(right)
        return value

    def _and(self, env: dict[str, Any]) -> Any:
        value = self._comparison(env)
        while self._take("&&", "and"):
            right = self._comparison(env)
            value = _boolean(value) and _boolean(right)
        return value

    def _comparison(self, env: dict[str, Any]) -> Any:
        value = self._unary(env)
        while True:
            negated = self._peek() == "not" and self._lookahead_in()
            if negated:
                self.at += 1
            operator = self._take("==", "!=", "<", "<=", ">", ">=", "in")
            if operator is None:
                return value
            right = self._unary(env)
            value = _compare(operator, value, right)
            if negated:
                value = not value

    def _lookahead_in(self) -> bool:
        return self.at + 1 < len(self.tokens) and self.tokens[self.at + 1][1] == "in"

    def _unary(self, env: dict[str, Any]) -> Any:
        if self._take("!", "not"):
            return not _boolean(self._unary(env))
        return self._postfix(env)

    def _postfix(self, env: dict[str, Any]) -> Any:
        value = self._primary(env)
        while True:
            if self._take("."):
                kind, name = self.tokens[self.at]
                if kind != "name":
                    raise ValueError(f"expected a field name, got {name!r}")
                self.at += 1
                value = _member(value, name)
            elif self._take("["):
                index = self._or(env)
                self._expect("]")
                value = _member(value, index)
            else:
                return value

    def _primary(self, env: dict[str, Any]) -> Any:
        if self.at >= len(self.tokens):
            raise ValueError("unexpected end of the expression")
        kind, text = self.tokens[self.at]
        self.at += 1
        if kind == "number":
            return float(text) if "." in text else int(text)
        if kind == "string":
            if text[0] == "'":
                body = text[1:-1].replace("\\'", "'").replace('"', '\\"')
                text = f'"{body}"'
            return json.loads(text)
        if text == "(":
            value = self._or(env)
            self._expect(")")
            return value
        if text == "[":
            items = []
            while not self._take("]"):
                items.append(self._or(env))
                if self._peek() != "]":
                    self._expect(",")
            return items
        if kind == "name":
            literals: dict[str, Any] = {"true": True, "false": False, "nil": None}
            if text in literals:
                return literals[text]
            if text in env:
                return env[text]
            raise ValueError(f"unknown name {text!r}")
        raise ValueError(f"unexpected {text!r}")


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected bool, got {value!r}")
    return value


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _member(value: Any, key: Any) -> Any:
    if isinstance(value, dict):
        return value.get(key)  # expr-lang: a missing key of a map is nil
    if isinstance(value, list) and _number(key):
        return value[int(key)]
    raise TypeError(f"cannot fetch {key!r} from {value!r}")


def _compare(operator: str, left: Any, right: Any) -> bool:
    if operator == "in":
        if isinstance(right, list):
            return any(_compare("==", left, item) for item in right)
        if isinstance(right, dict):
            return left in right
        raise TypeError(f"cannot use in on {right!r}")
    if operator in ("==", "!="):
        same = left == right if _number(left) == _number(right) else False
        return same if operator == "==" else not same
    comparable = (_number(left) and _number(right)) or (
        isinstance(left, str) and isinstance(right, str)
    )
    if not comparable:
        raise TypeError(f"invalid operation: {left!r} {operator} {right!r}")
    ordered: dict[str, bool] = {
        "<": left < right,
        "<=": left <= right,
        ">": left > right,
        ">=": left >= right,
    }
    return ordered[operator]


def measurement_phase(result: Any, metric: dict[str, Any]) -> str:
    """Argo's ``EvaluateResult``: a missing condition is the other one negated;
    neither holding is Inconclusive; a condition that cannot run is an Error."""
    success: str = metric.get("successCondition") or ""
    failure: str = metric.get("failureCondition") or ""
    if not success and not failure:
        return "Successful"
    env = {"result": result}
    try:
        succeeded = bool(success) and _boolean(Expr(success).evaluate(env))
        failed = bool(failure) and _boolean(Expr(failure).evaluate(env))
    except (TypeError, ValueError, IndexError):
        return "Error"
    if success and not failure:
        failed = not succeeded
    if failure and not success:
        succeeded = not failed
    if failed:
        return "Failed"
    return "Successful" if succeeded else "Inconclusive"


def resolve_args(metric: dict[str, Any], args: dict[str, str]) -> dict[str, Any]:
    """Argo's argument substitution: ``{{args.name}}`` anywhere in the metric."""
    text = json.dumps(metric)

    def value(match: re.Match[str]) -> str:
        return json.dumps(args[match[1]])[1:-1]

    return dict(json.loads(re.sub(r"\{\{\s*args\.([\w-]+)\s*\}\}", value, text)))


def template_args(template: dict[str, Any], given: list[dict[str, str]]) -> dict[str, str]:
    """The AnalysisTemplate's arguments with the Rollout's values, Secrets resolved."""
    values: dict[str, str] = {}
    for arg in template["spec"]["args"]:
        if "value" in arg:
            values[arg["name"]] = arg["value"]
        elif "valueFrom" in arg:
            ref = arg["valueFrom"]["secretKeyRef"]
            values[arg["name"]] = SECRETS[(ref["name"], ref["key"])]
    for arg in given:
        values[arg["name"]] = arg["value"]
    missing = [arg["name"] for arg in template["spec"]["args"] if arg["name"] not in values]
    assert not missing, f"the Rollout leaves arguments without a value: {missing}"
    return values


def measure(world: World, metric: dict[str, Any]) -> str:
    """One measurement of a ``web`` metric: the request, the status, the JSONPath, the
    conditions."""
    web = metric["provider"]["web"]
    url = urlsplit(web["url"])
    headers = {header["key"]: header["value"] for header in web.get("headers", [])}
    response = world.admin.request(
        web.get("method", "GET"), f"{url.path}?{url.query}", headers=headers
    )
    if not 200 <= response.status_code < 300:
        return "Error"
    return measurement_phase(json_path(response.json(), web.get("jsonPath", "{$}")), metric)


@dataclass
class MetricResult:
    measurements: list[str] = field(default_factory=list)

    def count(self, phase: str) -> int:
        return self.measurements.count(phase)

    def trailing(self, phase: str) -> int:
        run = 0
        for measured in reversed(self.measurements):
            if measured != phase:
                break
            run += 1
        return run


def assess(metric: dict[str, Any], result: MetricResult) -> str:
    """Argo's ``assessMetricStatus`` once a measurement is in: Failed, Inconclusive,
    Error past their limits, Successful on the consecutive successes or the count,
    else Running."""
    if result.count("Failed") > int(metric.get("failureLimit", 0)) >= 0:
        return "Failed"
    if result.count("Inconclusive") > int(metric.get("inconclusiveLimit", 0)):
        return "Inconclusive"
    if result.trailing("Error") > int(metric.get("consecutiveErrorLimit", 4)):
        return "Error"
    successes = int(metric.get("consecutiveSuccessLimit", 0))
    if successes > 0 and result.trailing("Successful") >= successes:
        return "Successful"
    count = metric.get("count")
    if count is not None and len(result.measurements) >= int(count):
        return "Successful"
    return "Running"


def run_analysis(world: World, metric: dict[str, Any], limit: float) -> tuple[str, MetricResult]:
    """An inline analysis step: measure every ``interval`` until the metric completes."""
    interval = seconds(metric["interval"])
    result = MetricResult()
    deadline = world.clock.now + limit
    while world.clock.now < deadline:
        result.measurements.append(measure(world, metric))
        phase = assess(metric, result)
        if phase != "Running":
            return phase, result
        world.advance(interval)
    raise AssertionError(f"the analysis ran {limit} s without completing: {result}")


@dataclass
class ArgoRun:
    outcome: str
    """``Promoted`` (every step done), ``Aborted`` (an analysis Failed or Errored) or
    ``Paused`` (an analysis Inconclusive)."""
    analyses: list[tuple[str, str]]
    """Each analysis step's step argument and phase."""


def run_rollout(world: World, rollout: dict[str, Any], template: dict[str, Any]) -> ArgoRun:
    """The Rollout's canary steps, in order, as Argo runs them."""
    (metric,) = template["spec"]["metrics"]
    analyses: list[tuple[str, str]] = []
    for step in rollout["spec"]["strategy"]["canary"]["steps"]:
        if "setWeight" in step:
            world.weight = float(step["setWeight"])
            continue
        (ref,) = step["analysis"]["templates"]
        assert ref["templateName"] == template["metadata"]["name"]
        args = template_args(template, step["analysis"].get("args", []))
        phase, _ = run_analysis(world, resolve_args(metric, args), limit=6 * 3600)
        analyses.append((args["step"], phase))
        if phase in ("Failed", "Error"):
            world.weight = 0.0
            return ArgoRun("Aborted", analyses)
        if phase == "Inconclusive":
            return ArgoRun("Paused", analyses)
    world.weight = 100.0
    return ArgoRun("Promoted", analyses)


def test_the_expr_subset_reads_as_expr_lang() -> None:
    env = {"result": {"ok": True, "rate": 0.95, "verdict": "pass", "list": [1, 2.5]}}
    for condition, expected in [
        ('result.verdict == "pass"', True),
        ("result.verdict == 'fail'", False),
        ("result.ok && result.rate >= 0.90", True),
        ("result.list[0] < 2 and result.list[1] == 2.5", True),
        ('result.verdict in ["pass", "inconclusive"]', True),
        ('result.verdict not in ["pass"]', False),
        ('!(result.verdict == "fail") || false', True),
        ("result.missing == nil", True),
        ('result.rate == "0.95"', False),
    ]:
        assert Expr(condition).evaluate(env) is expected, condition
    metric = {"successCondition": 'result == "pass"', "failureCondition": 'result == "fail"'}
    assert [measurement_phase(verdict, metric) for verdict in ("pass", "fail", "nodata")] == [
        "Successful",
        "Failed",
        "Inconclusive",
    ]
    assert measurement_phase(3, {"successCondition": "result > 'x'"}) == "Error"
    assert measurement_phase("x", {"successCondition": 'result == "pass"'}) == "Failed"
    assert json_path({"a": {"b": [7]}}, "{$.a.b[0]}") == 7


# -- the Argo Rollouts example ------------------------------------------------------------


def argo_files() -> tuple[dict[str, Any], dict[str, Any], Policy]:
    template = the("AnalysisTemplate", ARGO / "analysis-template.yaml")
    rollout = the("Rollout", ARGO / "rollout.yaml")
    return template, rollout, load_policy(ARGO / "policy.yaml")


def test_the_argo_example_holds_together() -> None:
    template, rollout, policy = argo_files()
    canary = rollout["spec"]["strategy"]["canary"]
    weights = [float(step["setWeight"]) for step in canary["steps"] if "setWeight" in step]
    # coalmine's steps are the Rollout's weights: the sample-ratio check holds Argo to them
    assert weights == [step.weight for step in policy.steps]
    assert policy.routing.provider.value == "none"
    gates = [step["analysis"] for step in canary["steps"] if "analysis" in step]
    assert [arg["value"] for gate in gates for arg in gate["args"] if arg["name"] == "step"] == [
        "1",
        "2",
        "3",
    ]
    image_tag = rollout["spec"]["template"]["spec"]["containers"][0]["image"].rsplit(":", 1)[1]
    for gate in gates:
        args = {arg["name"]: arg["value"] for arg in gate["args"]}
        assert (args["release"], args["version"]) == (policy.name, image_tag)
    assert policy.target.version == image_tag
    (metric,) = template["spec"]["metrics"]
    assert metric["provider"]["web"]["jsonPath"] == "{$.verdict}"
    # coalmine, not the count, ends a step: more inconclusive looks than the longest step
    longest = max(step.max_duration or step.min_duration for step in policy.steps)
    assert int(metric["inconclusiveLimit"]) * seconds(metric["interval"]) > longest
    assert template["metadata"]["namespace"] == rollout["metadata"]["namespace"]


def test_argo_aborts_a_bad_canary(make_world: WorldFactory) -> None:
    template, rollout, _ = argo_files()
    world = make_world(ARGO / "policy.yaml")
    world.canary_score = 0.5
    run = run_rollout(world, rollout, template)
    assert run.outcome == "Aborted", run
    assert run.analyses == [("1", "Failed")]
    assert world.phase() is Phase.ROLLED_BACK
    assert world.decisions() == ["start", "rollback"]
    assert world.weight == 0.0


def test_argo_promotes_a_good_canary_step_by_step(make_world: WorldFactory) -> None:
    template, rollout, _ = argo_files()
    world = make_world(ARGO / "policy.yaml")
    run = run_rollout(world, rollout, template)
    assert run.outcome == "Promoted", run
    assert run.analyses == [("1", "Successful"), ("2", "Successful"), ("3", "Successful")]
    assert world.phase() is Phase.PROMOTED
    assert world.decisions() == ["start", "advance", "advance", "promote"]
    # the split followed coalmine's steps closely enough for its sample-ratio check
    release = world.state.release(world.release)
    assert release is not None and "sample-ratio" not in release.reason


# -- Flagger -------------------------------------------------------------------------------


@dataclass
class FlaggerRun:
    outcome: str
    """``Succeeded`` (promoted) or ``Failed`` (rolled back)."""
    failed_checks: int
    gates: list[tuple[str, int]]
    """Every webhook call: its type and the status code."""


def call_webhook(world: World, hook: dict[str, Any], canary: dict[str, Any]) -> int:
    """A Flagger webhook call: POST of the Canary's payload; Flagger's ``CallWebhook``
    takes a status above 202 as a failure."""
    url = urlsplit(hook["url"])
    payload = {
        "name": canary["metadata"]["name"],
        "namespace": canary["metadata"]["namespace"],
        "phase": "Progressing",
        "checksum": "7c5ec2f6",
        "metadata": hook.get("metadata", {}),
    }
    response = world.admin.post(f"{url.path}?{url.query}", json=payload)
    return response.status_code


def run_canary(world: World, canary: dict[str, Any], intervals: int = 600) -> FlaggerRun:
    """Flagger's canary analysis with ``stepWeights``: each interval, roll back at the
    threshold of failed checks; else run the rollout hooks (a failure is a failed
    check), then raise the weight, or at the last weight confirm the promotion."""
    analysis = canary["spec"]["analysis"]
    interval = seconds(analysis["interval"])
    weights = [float(weight) for weight in analysis["stepWeights"]]
    hooks = analysis["webhooks"]
    failed = 0
    gates: list[tuple[str, int]] = []

    def passed(kind: str) -> bool:
        ok = True
        for hook in (hook for hook in hooks if hook["type"] == kind):
            status = call_webhook(world, hook, canary)
            gates.append((kind, status))
            ok = ok and status <= 202
        return ok

    for _ in range(intervals):
        if failed >= int(analysis["threshold"]):
            world.weight = 0.0
            return FlaggerRun("Failed", failed, gates)
        if world.weight == 0.0:  # the first iteration: no traffic on the canary yet
            if passed("pre-rollout"):
                world.weight = weights[0]
            else:
                failed += 1
        elif not passed("rollout"):
            failed += 1
        else:
            higher = [weight for weight in weights if weight > world.weight]
            if higher:
                world.weight = higher[0]
            elif passed("confirm-promotion"):
                world.weight = 100.0
                return FlaggerRun("Succeeded", failed, gates)
        world.advance(interval)
    raise AssertionError(f"no end after {intervals} intervals: {gates[-5:]}")


def flagger_canary() -> dict[str, Any]:
    """The example Canary, applied as the docs say: the admin token in place of the
    placeholder."""
    text = (FLAGGER / "canary.yaml").read_text(encoding="utf-8")
    (canary,) = yaml.safe_load_all(text.replace(TOKEN_PLACEHOLDER, TOKEN))
    return dict(canary)


def test_the_flagger_example_holds_together() -> None:
    canary = flagger_canary()
    policy = load_policy(FLAGGER / "policy.yaml")
    analysis = canary["spec"]["analysis"]
    assert [float(weight) for weight in analysis["stepWeights"]] == [
        step.weight for step in policy.steps
    ]
    assert policy.routing.provider.value == "none"
    hooks = {hook["type"]: hook for hook in analysis["webhooks"]}
    assert set(hooks) == {"rollout", "confirm-promotion"}
    for kind, gate in (("rollout", "rollout"), ("confirm-promotion", "promotion")):
        url = urlsplit(hooks[kind]["url"])
        assert url.path == f"/analysis/{policy.name}/webhook/{gate}"
        assert parse_qs(url.query) == {"version": [policy.target.version]}
        assert hooks[kind]["metadata"] == {"token": TOKEN}
        assert seconds(hooks[kind]["timeout"]) <= 10


def test_flagger_rolls_back_a_bad_canary(make_world: WorldFactory) -> None:
    world = make_world(FLAGGER / "policy.yaml")
    world.canary_score = 0.5
    run = run_canary(world, flagger_canary())
    assert run.outcome == "Failed", run
    assert world.phase() is Phase.ROLLED_BACK
    closed = [status for kind, status in run.gates if kind == "rollout" and status != 200]
    assert closed and set(closed) == {409}
    assert run.failed_checks == int(flagger_canary()["spec"]["analysis"]["threshold"])
    assert ("confirm-promotion", 200) not in run.gates


def test_flagger_promotes_a_good_canary(make_world: WorldFactory) -> None:
    world = make_world(FLAGGER / "policy.yaml")
    run = run_canary(world, flagger_canary())
    assert run.outcome == "Succeeded", run
    assert run.failed_checks == 0
    assert world.phase() is Phase.PROMOTED
    assert world.decisions() == ["start", "promote"]
    promotions = [status for kind, status in run.gates if kind == "confirm-promotion"]
    # held while coalmine judged, opened once it promoted
    assert promotions[-1] == 200 and set(promotions[:-1]) == {409}
    assert not math.isnan(world.weight) and world.weight == 100.0
