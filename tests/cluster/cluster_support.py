"""Helpers of the cluster-mode tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

T0 = 1_800_000_000.0
NAMESPACE = "shop"
"""The namespace of every cluster-mode test."""


class Clock:
    """Seconds that move only when told; also a wall clock for Lease timestamps."""

    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wait_until(condition: Callable[[], Any], *, within: float = 10.0, what: str) -> None:
    """Poll until ``condition()`` is true; fail naming ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def write_kubeconfig(path: Path, server: str, token: str | None, namespace: str) -> Path:
    """A kubeconfig for the fake API server, as ``kubectl`` would read it."""
    user: dict[str, Any] = {"token": token} if token else {}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "coalmine", "user": user}],
        "contexts": [
            {
                "name": "fake",
                "context": {"cluster": "fake", "user": "coalmine", "namespace": namespace},
            }
        ],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path
