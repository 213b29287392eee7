"""Loading policy files: every problem is reported with file, line, column and field."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from policies import PolicyError, PolicyIssue, load_policy, load_policy_text

FILE = "policies/release.yaml"

# Line numbers matter: the cases below replace one line or a part of it and expect the
# issue on a given line.
BASE = """\
apiVersion: coalmine/v1
kind: Release
name: checkout-prompt
target:
  prompt: {name: checkout, stableLabel: production, canaryLabel: canary}
  upstreams: {stable: "http://stable:8000", canary: "http://canary:8000"}
routing:
  stickiness: {header: x-user-id}
steps:
  - {weight: 5, minDuration: 10m}
  - {weight: 25, minDuration: 10m}
  - {weight: 50, minDuration: 10m, maxDuration: 2h}
shadow: {upstream: "http://staging:8002", percent: 10}
analysis:
  interval: 60s
  alpha: 0.05
  scoreSettle: 1m
  scoreTimeout: 30m
  metrics:
    - {name: helpfulness, source: score, score: helpfulness, tolerance: 0.02, critical: true}
    - {name: errors, source: error_rate, tolerance: 0.01, critical: true}
    - {name: cost, source: cost, tolerancePercent: 10}
    - {name: latency, source: latency, quantile: 0.95, tolerancePercent: 20}
"""

BASE_LINES = BASE.splitlines(keepends=True)


def edit(old: str, new: str) -> str:
    """BASE with the single occurrence of `old` replaced by `new`."""
    assert BASE.count(old) == 1, f"{old!r} must occur exactly once in BASE"
    return BASE.replace(old, new)


def replace_lines(first: int, last: int, new: str) -> str:
    """BASE with lines first..last (1-based, inclusive) replaced by `new`."""
    return "".join(BASE_LINES[: first - 1]) + new + "".join(BASE_LINES[last:])


@dataclass(frozen=True)
class Bad:
    text: str
    line: int
    column: int
    path: str
    message: str


METRIC_0 = "{name: helpfulness, source: score, score: helpfulness, tolerance: 0.02,"

INVALID: dict[str, Bad] = {
    # ---------------------------------------------------------------- document
    "empty file": Bad("", 1, 1, "<document>", "empty file"),
    "only comments": Bad("# nothing yet\n", 1, 1, "<document>", "empty file"),
    "top-level list": Bad(
        "- name: a\n- name: b\n", 1, 1, "<document>", "must be a mapping of fields"
    ),
    "top-level scalar": Bad("release\n", 1, 1, "<document>", "not a single value"),
    "several documents": Bad(BASE + "---\n" + BASE, 24, 1, "<document>", "several YAML documents"),
    "yaml syntax error": Bad(
        edit("percent: 10}", "percent: 10"), 14, 9, "<document>", "YAML syntax error"
    ),
    "bad indentation": Bad(
        edit("  alpha: 0.05\n", "    alpha: 0.05\n"), 16, 10, "<document>", "YAML syntax error"
    ),
    "duplicate key": Bad(
        edit("name: checkout-prompt\n", "name: checkout-prompt\nname: checkout-v2\n"),
        4,
        1,
        "name",
        "duplicate key 'name' (first set on line 3)",
    ),
    "duplicate nested key": Bad(
        edit("  alpha: 0.05\n", "  alpha: 0.05\n  alpha: 0.01\n"),
        17,
        3,
        "analysis.alpha",
        "duplicate key 'alpha'",
    ),
    "control character": Bad(
        edit("kind: Release", "kind: Rel\x07ease"), 2, 10, "<document>", "U+0007"
    ),
    # ---------------------------------------------------------------- top level
    "unknown top-level key": Bad(
        edit("routing:", "routng:"), 7, 1, "routng", "unknown field; did you mean 'routing'?"
    ),
    "wrong apiVersion": Bad(
        edit("coalmine/v1", "coalmine/v2"), 1, 13, "apiVersion", "must be coalmine/v1"
    ),
    "wrong kind": Bad(edit("kind: Release", "kind: Rollout"), 2, 7, "kind", "must be Release"),
    "missing apiVersion": Bad(
        replace_lines(1, 1, ""), 1, 1, "apiVersion", "required field missing"
    ),
    "release name upper case": Bad(
        edit("name: checkout-prompt", "name: Checkout"),
        3,
        7,
        "name",
        "must be lower-case letters, digits and '-'",
    ),
    "release name underscore": Bad(
        edit("name: checkout-prompt", "name: checkout_prompt"),
        3,
        7,
        "name",
        "must be lower-case letters, digits and '-'",
    ),
    "release name ends with dash": Bad(
        edit("name: checkout-prompt", "name: checkout-"), 3, 7, "name", "ending with a letter"
    ),
    "release name too long": Bad(
        edit("name: checkout-prompt", "name: " + "a" * 64),
        3,
        7,
        "name",
        "must have at most 63 characters",
    ),
    # ---------------------------------------------------------------- target
    "no target": Bad(replace_lines(4, 6, ""), 1, 1, "target", "required field missing"),
    "empty target": Bad(
        replace_lines(4, 6, "target: {}\n"), 4, 9, "target", "needs prompt or upstreams"
    ),
    "ftp upstream": Bad(
        edit("http://stable:8000", "ftp://stable:8000"),
        6,
        23,
        "target.upstreams.stable",
        "must be an http or https URL",
    ),
    "upstream without host": Bad(
        edit("http://canary:8000", "http:///canary"),
        6,
        53,
        "target.upstreams.canary",
        "must be an http or https URL",
    ),
    "canary label latest": Bad(
        edit("canaryLabel: canary", "canaryLabel: latest"),
        5,
        66,
        "target.prompt.canaryLabel",
        "'latest' is managed by Langfuse",
    ),
    "stable label equals canary label": Bad(
        edit("stableLabel: production", "stableLabel: canary"),
        5,
        62,
        "target.prompt.canaryLabel",
        "must differ from stableLabel ('canary')",
    ),
    "label with upper case": Bad(
        edit("stableLabel: production", "stableLabel: Production"),
        5,
        41,
        "target.prompt.stableLabel",
        "must be a Langfuse label",
    ),
    "empty prompt name": Bad(
        edit("{name: checkout,", '{name: "",'), 5, 18, "target.prompt.name", "must not be empty"
    ),
    # ---------------------------------------------------------------- routing
    "stickiness header and cookie": Bad(
        edit("{header: x-user-id}", "{header: x-user-id, cookie: sid}"),
        8,
        15,
        "routing.stickiness",
        "set header or cookie, not both",
    ),
    "stickiness neither": Bad(
        edit("{header: x-user-id}", "{}"), 8, 15, "routing.stickiness", "needs header or cookie"
    ),
    "stickiness other word": Bad(
        edit("{header: x-user-id}", "sticky"),
        8,
        15,
        "routing.stickiness",
        "must be {header: NAME}, {cookie: NAME} or none",
    ),
    "stickiness unknown key": Bad(
        edit("{header: x-user-id}", "{headers: x-user-id}"),
        8,
        16,
        "routing.stickiness.headers",
        "did you mean 'header'?",
    ),
    "stickiness bad header name": Bad(
        edit("{header: x-user-id}", '{header: "x user"}'),
        8,
        24,
        "routing.stickiness.header",
        "must be a header or cookie name",
    ),
    # ---------------------------------------------------------------- steps
    "weights not increasing": Bad(
        edit("{weight: 25,", "{weight: 5,"),
        11,
        14,
        "steps[1].weight",
        "must be greater than the previous step's weight (5)",
    ),
    "weight 0": Bad(edit("{weight: 5,", "{weight: 0,"), 10, 14, "steps[0].weight", "must be > 0"),
    "weight 101": Bad(
        edit("{weight: 50,", "{weight: 101,"), 12, 14, "steps[2].weight", "must be <= 100"
    ),
    "weight not a number": Bad(
        edit("{weight: 5,", "{weight: five,"), 10, 14, "steps[0].weight", "must be a number"
    ),
    "weight true": Bad(
        edit("{weight: 5,", "{weight: true,"), 10, 14, "steps[0].weight", "must be a number"
    ),
    "no steps": Bad(replace_lines(9, 12, "steps: []\n"), 9, 8, "steps", "must not be empty"),
    "bad duration": Bad(
        edit("{weight: 5, minDuration: 10m}", "{weight: 5, minDuration: 10 minutes}"),
        10,
        30,
        "steps[0].minDuration",
        "must be a duration such as 250ms, 30s, 10m, 2h or 1h30m",
    ),
    "duration without unit": Bad(
        edit("{weight: 5, minDuration: 10m}", "{weight: 5, minDuration: 600}"),
        10,
        30,
        "steps[0].minDuration",
        "must be a duration",
    ),
    "duration units out of order": Bad(
        edit("{weight: 5, minDuration: 10m}", "{weight: 5, minDuration: 30m1h}"),
        10,
        30,
        "steps[0].minDuration",
        "must be a duration",
    ),
    "minDuration above maxDuration": Bad(
        edit("minDuration: 10m, maxDuration: 2h", "minDuration: 3h, maxDuration: 2h"),
        12,
        48,
        "steps[2].maxDuration",
        "must be >= minDuration (3h)",
    ),
    "maxDuration zero": Bad(
        edit("maxDuration: 2h", "maxDuration: 0s"),
        12,
        49,
        "steps[2].maxDuration",
        "must be > 0s",
    ),
    "step minSamples zero": Bad(
        edit("{weight: 5, minDuration: 10m}", "{weight: 5, minDuration: 10m, minSamples: 0}"),
        10,
        47,
        "steps[0].minSamples",
        "must be >= 1",
    ),
    "step minSamples fraction": Bad(
        edit("{weight: 5, minDuration: 10m}", "{weight: 5, minDuration: 10m, minSamples: 2.5}"),
        10,
        47,
        "steps[0].minSamples",
        "must be an integer",
    ),
    "snake_case key": Bad(
        edit("{weight: 5, minDuration: 10m}", "{weight: 5, min_duration: 10m}"),
        10,
        17,
        "steps[0].min_duration",
        "unknown field; did you mean 'minDuration'?",
    ),
    # ---------------------------------------------------------------- shadow
    "shadow percent 0": Bad(
        edit("percent: 10}", "percent: 0}"), 13, 52, "shadow.percent", "must be > 0"
    ),
    "shadow upstream ftp": Bad(
        edit('"http://staging:8002"', '"ftp://staging"'),
        13,
        20,
        "shadow.upstream",
        "must be an http or https URL",
    ),
    "shadow method lower case": Bad(
        edit("percent: 10}", "percent: 10, methods: [post]}"),
        13,
        66,
        "shadow.methods[0]",
        "must be an upper-case HTTP method name",
    ),
    "shadow method twice": Bad(
        edit("percent: 10}", "percent: 10, methods: [POST, PUT, POST]}"),
        13,
        77,
        "shadow.methods[2]",
        "duplicate method 'POST'",
    ),
    "shadow missing upstream": Bad(
        edit('{upstream: "http://staging:8002", percent: 10}', "{percent: 10}"),
        13,
        9,
        "shadow.upstream",
        "required field missing",
    ),
    # ---------------------------------------------------------------- analysis
    "no analysis": Bad(replace_lines(14, 23, ""), 1, 1, "analysis", "required field missing"),
    "alpha 0": Bad(edit("alpha: 0.05", "alpha: 0"), 16, 10, "analysis.alpha", "must be > 0"),
    "alpha 0.7": Bad(edit("alpha: 0.05", "alpha: 0.7"), 16, 10, "analysis.alpha", "must be < 0.5"),
    "interval below one second": Bad(
        edit("interval: 60s", "interval: 500ms"), 15, 13, "analysis.interval", "must be >= 1s"
    ),
    "scoreTimeout equal to scoreSettle": Bad(
        edit("scoreTimeout: 30m", "scoreTimeout: 1m"),
        18,
        17,
        "analysis.scoreTimeout",
        "must be greater than scoreSettle (1m)",
    ),
    "onMaxDuration unknown": Bad(
        edit("  alpha: 0.05\n", "  alpha: 0.05\n  onMaxDuration: abort\n"),
        17,
        18,
        "analysis.onMaxDuration",
        "must be one of: pause, rollback, promote",
    ),
    "coverageTolerance above 1": Bad(
        edit("  alpha: 0.05\n", "  alpha: 0.05\n  coverageTolerance: 2\n"),
        17,
        22,
        "analysis.coverageTolerance",
        "must be <= 1",
    ),
    "circuit breaker error rate 0": Bad(
        edit("  alpha: 0.05\n", "  alpha: 0.05\n  circuitBreaker: {errorRate: 0}\n"),
        17,
        31,
        "analysis.circuitBreaker.errorRate",
        "must be > 0",
    ),
    "sample ratio alpha 0.5": Bad(
        edit("  alpha: 0.05\n", "  alpha: 0.05\n  sampleRatio: {alpha: 0.5}\n"),
        17,
        24,
        "analysis.sampleRatio.alpha",
        "must be < 0.5",
    ),
    "no metrics": Bad(
        replace_lines(19, 23, "  metrics: []\n"), 19, 12, "analysis.metrics", "must not be empty"
    ),
    "metrics missing": Bad(
        replace_lines(19, 23, ""), 15, 3, "analysis.metrics", "required field missing"
    ),
    # ---------------------------------------------------------------- metrics
    "duplicate metric names": Bad(
        edit("{name: cost,", "{name: errors,"),
        22,
        14,
        "analysis.metrics[2].name",
        "duplicate metric name 'errors' (also analysis.metrics[1])",
    ),
    "bad metric name": Bad(
        edit("{name: cost,", "{name: Cost,"),
        22,
        14,
        "analysis.metrics[2].name",
        "must be lower-case letters, digits, '_', '.' and '-'",
    ),
    "unknown metric source": Bad(
        edit("source: cost,", "source: dollars,"),
        22,
        28,
        "analysis.metrics[2].source",
        "must be one of: score, error_rate, cost, latency",
    ),
    "unknown metric key": Bad(
        edit("tolerancePercent: 10}", "tolerancePercnt: 10}"),
        22,
        34,
        "analysis.metrics[2].tolerancePercnt",
        "unknown field; did you mean 'tolerancePercent'?",
    ),
    "tolerance and tolerancePercent": Bad(
        edit("tolerancePercent: 10}", "tolerancePercent: 10, tolerance: 0.1}"),
        22,
        7,
        "analysis.metrics[2]",
        "set tolerance or tolerancePercent, not both",
    ),
    "neither tolerance": Bad(
        edit("tolerance: 0.01, critical: true}", "critical: true}"),
        21,
        7,
        "analysis.metrics[1]",
        "needs tolerance or tolerancePercent",
    ),
    "tolerancePercent on a score metric": Bad(
        edit("tolerance: 0.02,", "tolerancePercent: 2,"),
        20,
        80,
        "analysis.metrics[0].tolerancePercent",
        "score metrics take tolerance, not tolerancePercent",
    ),
    "tolerancePercent on error_rate": Bad(
        edit("tolerance: 0.01,", "tolerancePercent: 1,"),
        21,
        60,
        "analysis.metrics[1].tolerancePercent",
        "error_rate metrics take tolerance",
    ),
    "tolerance on cost": Bad(
        edit("tolerancePercent: 10}", "tolerance: 0.001}"),
        22,
        45,
        "analysis.metrics[2].tolerance",
        "cost metrics take tolerancePercent, not tolerance",
    ),
    "negative tolerance": Bad(
        edit("tolerance: 0.01,", "tolerance: -0.01,"),
        21,
        53,
        "analysis.metrics[1].tolerance",
        "must be >= 0",
    ),
    "error rate tolerance above 1": Bad(
        edit("tolerance: 0.01,", "tolerance: 5,"),
        21,
        53,
        "analysis.metrics[1].tolerance",
        "must be < 1",
    ),
    "tolerance wider than the score range": Bad(
        edit(METRIC_0, "{name: helpfulness, source: score, score: helpfulness, tolerance: 2,"),
        20,
        73,
        "analysis.metrics[0].tolerance",
        "must be less than the width of the score range (1)",
    ),
    "quantile on a score metric": Bad(
        edit(METRIC_0, METRIC_0 + " quantile: 0.9,"),
        20,
        89,
        "analysis.metrics[0].quantile",
        "only for latency metrics",
    ),
    "latency quantile 1": Bad(
        edit("quantile: 0.95", "quantile: 1"),
        23,
        50,
        "analysis.metrics[3].quantile",
        "must be < 1",
    ),
    "score metric without score": Bad(
        edit("score: helpfulness, tolerance", "tolerance"),
        20,
        7,
        "analysis.metrics[0].score",
        "required when source is score",
    ),
    "score on a cost metric": Bad(
        edit("source: cost,", "source: cost, score: price,"),
        22,
        41,
        "analysis.metrics[2].score",
        "only for source score, not cost",
    ),
    "scoreType on a latency metric": Bad(
        edit("source: latency,", "source: latency, scoreType: boolean,"),
        23,
        51,
        "analysis.metrics[3].scoreType",
        "only for source score",
    ),
    "categorical without badValues": Bad(
        edit(METRIC_0, METRIC_0 + " scoreType: categorical,"),
        20,
        7,
        "analysis.metrics[0].badValues",
        "required for categorical scores",
    ),
    "badValues on a numeric score": Bad(
        edit(METRIC_0, METRIC_0 + " badValues: [bad],"),
        20,
        90,
        "analysis.metrics[0].badValues",
        "only for categorical scores",
    ),
    "empty badValues": Bad(
        edit(METRIC_0, METRIC_0 + " scoreType: categorical, badValues: [],"),
        20,
        114,
        "analysis.metrics[0].badValues",
        "must not be empty",
    ),
    "range on a boolean score": Bad(
        edit(METRIC_0, METRIC_0 + " scoreType: boolean, range: {min: 0, max: 1},"),
        20,
        106,
        "analysis.metrics[0].range",
        "only for numeric scores",
    ),
    "range min above max": Bad(
        edit(METRIC_0, METRIC_0 + " range: {min: 1, max: 1},"),
        20,
        100,
        "analysis.metrics[0].range.max",
        "must be greater than min (1)",
    ),
    "direction higher on error_rate": Bad(
        edit("source: error_rate,", "source: error_rate, direction: higher,"),
        21,
        53,
        "analysis.metrics[1].direction",
        "must be lower for error_rate metrics",
    ),
    "direction higher on a categorical score": Bad(
        edit(
            METRIC_0,
            METRIC_0 + " scoreType: categorical, badValues: [rude], direction: higher,",
        ),
        20,
        133,
        "analysis.metrics[0].direction",
        "must be lower for categorical score metrics",
    ),
    "direction sideways": Bad(
        edit("source: error_rate,", "source: error_rate, direction: up,"),
        21,
        53,
        "analysis.metrics[1].direction",
        "must be one of: higher, lower",
    ),
    "critical not a boolean": Bad(
        edit("critical: true}\n    - {name: cost", "critical: maybe}\n    - {name: cost"),
        21,
        69,
        "analysis.metrics[1].critical",
        "must be true or false",
    ),
    "alphaWeight 0": Bad(
        edit("tolerancePercent: 10}", "tolerancePercent: 10, alphaWeight: 0}"),
        22,
        69,
        "analysis.metrics[2].alphaWeight",
        "must be > 0",
    ),
    "effectSize negative": Bad(
        edit("tolerancePercent: 10}", "tolerancePercent: 10, effectSize: -5}"),
        22,
        68,
        "analysis.metrics[2].effectSize",
        "must be > 0",
    ),
    "metric not a mapping": Bad(
        edit("    - {name: cost, source: cost, tolerancePercent: 10}\n", "    - cost\n"),
        22,
        7,
        "analysis.metrics[2]",
        "must be a mapping",
    ),
    "promoteTolerance on a percent metric": Bad(
        edit("tolerancePercent: 10}", "tolerancePercent: 10, promoteTolerance: 0.2}"),
        22,
        74,
        "analysis.metrics[2].promoteTolerance",
        "goes with tolerance; use promoteTolerancePercent",
    ),
    "promoteTolerancePercent on an absolute metric": Bad(
        edit("tolerance: 0.01,", "tolerance: 0.01, promoteTolerancePercent: 5,"),
        21,
        84,
        "analysis.metrics[1].promoteTolerancePercent",
        "goes with tolerancePercent",
    ),
    "promoteTolerance of a rate at 1": Bad(
        edit("tolerance: 0.01,", "tolerance: 0.01, promoteTolerance: 1,"),
        21,
        77,
        "analysis.metrics[1].promoteTolerance",
        "must be < 1",
    ),
    "effectSize on latency": Bad(
        edit("quantile: 0.95,", "quantile: 0.95, effectSize: 10,"),
        23,
        68,
        "analysis.metrics[3].effectSize",
        "not for latency metrics",
    ),
    "tolerance not finite": Bad(
        edit("tolerance: 0.01,", "tolerance: .inf,"),
        21,
        53,
        "analysis.metrics[1].tolerance",
        "must be a finite number",
    ),
}


@pytest.mark.parametrize("case", INVALID.values(), ids=INVALID.keys())
def test_invalid_policy_reports_where_and_what(case: Bad) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(case.text, FILE)
    issue = caught.value.issues[0]
    assert (issue.file, issue.line, issue.column, issue.path) == (
        FILE,
        case.line,
        case.column,
        case.path,
    ), str(issue)
    assert case.message in issue.message, str(issue)


def test_base_policy_is_valid() -> None:
    policy = load_policy_text(BASE, FILE)
    assert policy.name == "checkout-prompt"
    assert [step.weight for step in policy.steps] == [5, 25, 50]


def test_there_are_many_invalid_cases() -> None:
    assert len(INVALID) >= 30


def test_every_problem_is_reported_sorted_by_line() -> None:
    text = edit("alpha: 0.05", "alpha: 0.7")
    text = text.replace("{weight: 50,", "{weight: 101,")
    text = text.replace("name: checkout-prompt", "name: Checkout")
    text = text.replace("routing:", "routng:")
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, FILE)
    issues = caught.value.issues
    assert [(issue.line, issue.path) for issue in issues] == [
        (3, "name"),
        (7, "routng"),
        (12, "steps[2].weight"),
        (16, "analysis.alpha"),
    ]
    assert str(caught.value) == f"{issues[0]} (and 3 more)"


def test_every_metric_rule_broken_at_once_is_reported() -> None:
    text = edit(
        "{name: cost, source: cost, tolerancePercent: 10}",
        "{name: cost, source: cost, score: x, quantile: 0.5, direction: higher, tolerance: 1}",
    )
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, FILE)
    assert [issue.path for issue in caught.value.issues] == [
        "analysis.metrics[2].score",
        "analysis.metrics[2].quantile",
        "analysis.metrics[2].direction",
        "analysis.metrics[2].tolerance",
    ]


def test_duplicate_key_is_reported_with_validation_issues() -> None:
    text = edit("kind: Release\n", "kind: Release\nkind: Release\n").replace(
        "alpha: 0.05", "alpha: 0"
    )
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, FILE)
    assert [str(issue) for issue in caught.value.issues] == [
        f"{FILE}:3:1: kind: duplicate key 'kind' (first set on line 2)",
        f"{FILE}:17:10: analysis.alpha: must be > 0",
    ]


def test_issue_text_format() -> None:
    issue = PolicyIssue("policies/x.yaml", 14, 7, "analysis.metrics[1].tolerance", "must be >= 0")
    assert str(issue) == "policies/x.yaml:14:7: analysis.metrics[1].tolerance: must be >= 0"
    error = PolicyError([issue])
    assert str(error) == str(issue)
    assert error.issues == (issue,)


def test_policy_error_needs_an_issue() -> None:
    with pytest.raises(ValueError, match="at least one issue"):
        PolicyError([])


def test_unknown_field_without_close_match_lists_the_fields() -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(edit("percent: 10}", "percent: 10, zzz: 1}"), FILE)
    message = caught.value.issues[0].message
    assert message.startswith("unknown field; expected one of: upstream, percent, methods")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value) == f"{path}:1:1: <document>: file not found"


def test_directory_is_not_a_policy(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="is a directory"):
        load_policy(tmp_path)


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(BASE.replace("checkout-prompt", "caf\xe9").encode("latin-1"))
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    issue = caught.value.issues[0]
    assert (issue.line, issue.column, issue.path) == (3, 10, "<document>")
    assert "not valid UTF-8 (byte 0xe9)" in issue.message


def test_file_with_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    assert load_policy(path).name == "checkout-prompt"


def test_load_policy_accepts_str_and_path(tmp_path: Path) -> None:
    path = tmp_path / "release.yaml"
    path.write_text(BASE, encoding="utf-8")
    assert load_policy(str(path)) == load_policy(path) == load_policy_text(BASE, "x")


def test_issue_names_the_file_given(tmp_path: Path) -> None:
    path = tmp_path / "release.yaml"
    path.write_text(edit("alpha: 0.05", "alpha: 0"), encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value) == f"{path}:16:10: analysis.alpha: must be > 0"


def test_anchors_and_merge_keys_are_understood() -> None:
    text = edit(
        "  - {weight: 5, minDuration: 10m}\n",
        "  - &first {weight: 5, minDuration: 10m}\n",
    ).replace("  - {weight: 25, minDuration: 10m}\n", "  - {<<: *first, weight: 25}\n")
    policy = load_policy_text(text, FILE)
    assert policy.steps[1].weight == 25
    assert policy.steps[1].min_duration == 600.0


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(BASE + "extra: &loop [*loop]\n", FILE)
    messages = [(issue.path, issue.message) for issue in caught.value.issues]
    assert ("extra[0]", "an alias may not refer to itself") in messages


def test_unknown_tag_is_refused() -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(edit("alpha: 0.05", "alpha: !decimal 0.05"), FILE)
    issue = caught.value.issues[0]
    assert (issue.line, issue.path) == (16, "analysis.alpha")
    assert "could not determine a constructor" in issue.message


def test_yaml_keys_that_look_like_booleans_stay_keys() -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy_text(BASE + "on: true\n", FILE)
    assert caught.value.issues[0].path == "on"
