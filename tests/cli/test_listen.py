"""At start, each server says where it listens and whether it can be reached from outside
the pod or host: the image and the chart bind every one to all interfaces."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from coalmine.cli import main
from coalmine.cli.listen import reach

EXAMPLES = Path(__file__).resolve().parents[2] / "policies" / "examples"
TOKEN = "listen-test-token-0123456789abcdef"


@pytest.mark.parametrize(
    ("host", "outside"),
    [
        ("0.0.0.0", "all interfaces: reachable from outside"),
        ("::", "all interfaces: reachable from outside"),
        ("[::]", "all interfaces: reachable from outside"),
        ("127.0.0.1", "loopback only: not reachable from outside"),
        ("127.0.0.2", "loopback only: not reachable from outside"),
        ("::1", "loopback only: not reachable from outside"),
        ("localhost", "loopback only: not reachable from outside"),
        ("10.1.2.3", "interface 10.1.2.3 only: reachable from outside"),
        ("proxy.internal", "the interfaces proxy.internal resolves to"),
    ],
)
def test_who_can_reach_a_bound_address(host: str, outside: str) -> None:
    assert reach(host).startswith(outside)


def test_the_proxy_says_where_it_listens(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    served: list[Any] = []
    monkeypatch.setattr("proxy.server.serve", lambda app, settings: served.append(settings))
    for variable in list(os.environ):
        if variable.startswith(("COALMINE_", "LANGFUSE_")):
            monkeypatch.delenv(variable)
    monkeypatch.setenv("COALMINE_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("COALMINE_STATE", str(tmp_path / "state.db"))
    monkeypatch.setenv("COALMINE_METRICS_LISTEN", "127.0.0.1:0")
    caplog.set_level(logging.INFO, logger="coalmine.listen")

    code = main(
        [
            "proxy",
            "--policy",
            str(EXAMPLES / "agent-canary.yaml"),
            "--listen",
            "0.0.0.0:0",
            "--no-spans",
        ]
    )

    assert code == 0 and len(served) == 1
    lines = [record.getMessage() for record in caplog.records if record.name == "coalmine.listen"]
    assert lines == [
        "proxy on http://0.0.0.0:0 (all interfaces: reachable from outside the pod or host; "
        "the application's traffic; a forced arm needs the admin token)",
        "metrics on http://127.0.0.1:0/metrics (loopback only: not reachable from outside "
        "the pod or host; no authentication)",
    ]
    assert TOKEN not in caplog.text
