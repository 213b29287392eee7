"""The alert rules: valid for promtool, unit-tested by promtool (every alert fires in one
case and stays quiet in another), fully annotated, with a runbook section each, and
reading only metrics (and labels, and label values) that coalmine really exports."""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "charts" / "coalmine" / "files" / "alerts.yaml"
ALERTS_TEST = Path(__file__).resolve().parent / "alerts_test.yaml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
SEVERITIES = {"info", "warning", "page"}
ANNOTATIONS = {"summary", "description", "runbook_url"}


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


# -- promtool ---------------------------------------------------------------------------


def test_promtool_checks_the_rule_file(promtool: str) -> None:
    done = _run(promtool, "check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    done = _run(promtool, "test", "rules", str(ALERTS_TEST))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_file_is_one_coalmine_group_the_chart_can_embed_as_its_spec() -> None:
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert set(document) == {"groups"}
    assert [group["name"] for group in document["groups"]] == ["coalmine"]


# -- coverage of the promtool tests, annotations and runbooks ----------------------------


def test_every_alert_fires_in_one_test_and_stays_quiet_in_another(
    rules: list[dict[str, Any]], rule_tests: list[dict[str, Any]]
) -> None:
    firing: dict[str, list[dict[str, Any]]] = defaultdict(list)
    quiet: dict[str, int] = defaultdict(int)
    for case in rule_tests:
        if case.get("exp_alerts"):
            firing[case["alertname"]].extend(case["exp_alerts"])
        else:
            quiet[case["alertname"]] += 1
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert set(firing) | set(quiet) <= set(names), "a test names an alert that does not exist"
    for rule in rules:
        name = rule["alert"]
        assert firing[name], f"{name}: no promtool case where it fires"
        assert quiet[name], f"{name}: no promtool case where it stays quiet"
        for expected in firing[name]:
            # promtool compares labels and annotations exactly: these are the real ones
            assert expected["exp_labels"]["severity"] == rule["labels"]["severity"], name
            assert set(expected["exp_annotations"]) == ANNOTATIONS, name


def test_the_seven_alerts_of_the_on_call_brief_exist(rules: list[dict[str, Any]]) -> None:
    assert {rule["alert"] for rule in rules} >= {
        "CoalmineCanaryRolledBack",
        "CoalmineAnalysisStalled",
        "CoalmineReleasePausedTooLong",
        "CoalmineSampleRatioMismatch",
        "CoalmineShadowErrorRateHigh",
        "CoalmineProxyUpstreamErrorRateHigh",
        "CoalmineLangfuseRateLimited",
    }


def test_the_alerts_on_traffic_from_the_proxies_exist(rules: list[dict[str, Any]]) -> None:
    assert {rule["alert"] for rule in rules} >= {
        "CoalmineProxyCountsMissing",
        "CoalmineTraceLoss",
    }


def test_every_alert_has_a_severity_and_its_annotations(rules: list[dict[str, Any]]) -> None:
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert set(annotations) >= ANNOTATIONS, name
        assert "$labels" in annotations["summary"] + annotations["description"] or (
            "$value" in annotations["description"]
        ), f"{name}: the description says nothing of the firing series"
        assert annotations["runbook_url"] == f"docs/runbooks.md#{name.lower()}", name


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in markdown.splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            text = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_every_runbook_anchor_exists(rules: list[dict[str, Any]]) -> None:
    anchors = _anchors(RUNBOOKS.read_text(encoding="utf-8"))
    for rule in rules:
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert (ROOT / path).resolve() == RUNBOOKS.resolve()
        assert anchor in anchors, f"docs/runbooks.md has no section #{anchor}"


# -- the metrics the rules read are the ones coalmine exports ----------------------------


SELECTOR = re.compile(r"\b(coalmine_[A-Za-z0-9_:]+)\s*(?:\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
BY = re.compile(r"\bby\s*\(([^)]*)\)\s*\(")


@pytest.fixture
def exported(expositions: list[str]) -> dict[str, dict[str, set[str]]]:
    """What a live controller and proxy export, by sample name: label name -> values."""
    samples: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for text in expositions:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = samples[sample.name]
                for label, value in sample.labels.items():
                    labels[label].add(value)
    return samples


def _matching_paren(text: str, opening: int) -> int:
    depth = 0
    for index in range(opening, len(text)):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        if depth == 0:
            return index
    raise AssertionError(f"unbalanced parentheses in {text!r}")


def test_every_metric_label_and_value_the_rules_read_is_exported(
    rules: list[dict[str, Any]], exported: dict[str, dict[str, set[str]]]
) -> None:
    for rule in rules:
        name, expr = rule["alert"], rule["expr"]
        selectors = SELECTOR.findall(expr)
        assert selectors, f"{name} reads no coalmine metric"
        for metric, matchers in selectors:
            assert metric in exported, f"{name}: coalmine exports no {metric}"
            for label, op, value in MATCHER.findall(matchers):
                assert label in exported[metric], f"{name}: {metric} has no label {label}"
                if op in ("=", "=~"):
                    wanted = value.split("|") if op == "=~" else [value]
                    missing = set(wanted) - exported[metric][label]
                    assert not missing, f"{name}: {metric}{{{label}}} is never {missing}"
        for by in BY.finditer(expr):
            labels = {label.strip() for label in by.group(1).split(",") if label.strip()}
            inner = expr[by.end() - 1 : _matching_paren(expr, by.end() - 1) + 1]
            for metric, _ in SELECTOR.findall(inner):
                absent = labels - set(exported[metric])
                assert not absent, f"{name}: by {absent} but {metric} has no such label"


def test_the_metric_check_would_catch_a_renamed_metric(
    exported: dict[str, dict[str, set[str]]],
) -> None:
    assert "coalmine_decisions_total" in exported
    assert "coalmine_decision_total" not in exported
    assert "429" in exported["coalmine_langfuse_requests_total"]["status_class"]
