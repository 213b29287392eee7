"""The Grafana dashboard's queries: valid PromQL for promtool, and reading only metrics a
live controller or proxy exports, each in the unit its panel shows."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "coalmine" / "files" / "grafana-dashboard.json"
METRIC = re.compile(r"\bcoalmine_[A-Za-z0-9_]+")
HISTOGRAM_SAMPLES = ("_bucket", "_sum", "_count")
UNIT_OF_SUFFIX = {"_seconds": "s", "_ratio": "percentunit"}
"""The Grafana unit a panel of gauges named so must show."""


def _panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def _exprs() -> Iterator[tuple[str, str]]:
    for panel in _panels():
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def test_promtool_parses_every_query(promtool: str, tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:query_{index}", "expr": expr.replace("$release", ".*")}
        for index, (_, expr) in enumerate(_exprs())
    ]
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_metric_a_panel_reads_is_exported(expositions: list[str]) -> None:
    """By the names of the series on /metrics: a family with no series yet (a latency
    metric, none in the live policies; a counter no release has counted) is known by its
    declaration."""
    known: set[str] = set()
    for text in expositions:
        for family in text_string_to_metric_families(text):
            known.add(family.name)
            known.update(sample.name for sample in family.samples)
            if family.type == "counter":
                known.add(f"{family.name}_total")
            if family.type == "histogram":
                known.update(f"{family.name}{suffix}" for suffix in HISTOGRAM_SAMPLES)
    for title, expr in _exprs():
        for name in METRIC.findall(expr):
            assert name in known, f"panel {title!r}: coalmine exports no {name}"


def test_a_panel_of_seconds_or_ratios_shows_that_unit() -> None:
    for panel in _panels():
        names = {
            name for target in panel.get("targets", []) for name in METRIC.findall(target["expr"])
        }
        units = {
            unit
            for name in names
            for suffix, unit in UNIT_OF_SUFFIX.items()
            if name.endswith(suffix)
        }
        if len(units) == 1 and panel["type"] == "timeseries":
            assert panel["fieldConfig"]["defaults"].get("unit") in units, panel["title"]
