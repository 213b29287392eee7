"""Fixtures for the alert rules: where the rule file, its promtool tests and the runbooks
are, the rules parsed, and the Prometheus binaries (skipped when missing, except in CI)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "charts" / "coalmine" / "files" / "alerts.yaml"
ALERTS_TEST = Path(__file__).resolve().parent / "alerts_test.yaml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"


def binary(name: str) -> str:
    """Path of a Prometheus binary; skip without it, but fail under ``CI=true``."""
    found = shutil.which(name) or next(
        (str(path) for path in (Path("/usr/bin") / name,) if path.exists()), None
    )
    if found is None:
        reason = f"{name} is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must install it")
        pytest.skip(reason)
    return found


@pytest.fixture(scope="session")
def promtool() -> str:
    return binary("promtool")


@pytest.fixture(scope="session")
def prometheus() -> str:
    return binary("prometheus")


@pytest.fixture(scope="session")
def rules() -> list[dict[str, Any]]:
    """Every alerting rule of alerts.yaml."""
    document = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


@pytest.fixture(scope="session")
def rule_tests() -> list[dict[str, Any]]:
    """Every ``alert_rule_test`` entry of alerts_test.yaml."""
    document = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))
    return [case for test in document["tests"] for case in test.get("alert_rule_test", [])]
