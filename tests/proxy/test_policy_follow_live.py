"""The proxy on a real loopback port follows its watched policy directory: a policy file
written while it runs is routed within the reload interval, a prompt-only release goes to
the application with each arm's prompt label, a file that clashes with one in force is
kept out and counted (and takes over once the other is gone), a file removed is no
longer routed."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from policies.policy_files import PolicyFiles
from proxy.routes import PolicyFeed
from proxy.server import build_app
from proxy.settings import ProxySettings
from tests.proxy.proxy_support import (
    RunningProxy,
    UpstreamServed,
    start_server,
    wait_until,
)

pytestmark = pytest.mark.slow

TOKEN = "qa-token-1234567890-abcdefghijklmn"

AGENT = """\
apiVersion: coalmine/v1
kind: Release
name: agent
target:
  upstreams: {{stable: "{stable}", canary: "{canary}"}}
routing: {{pathPrefix: /agent}}
steps: [{{weight: 5}}, {{weight: 50}}]
analysis:
  metrics: [{{name: errors, source: error_rate, tolerance: 0.01}}]
"""

PROMPT_ONLY = """\
apiVersion: coalmine/v1
kind: Release
name: summary
target:
  prompt: {name: summarizer, stableLabel: production, canaryLabel: candidate}
routing: {pathPrefix: /summarize}
steps: [{weight: 5}, {weight: 50}]
analysis:
  metrics: [{name: errors, source: error_rate, tolerance: 0.01}]
"""


def test_a_policy_written_while_running_is_routed_to_the_app_with_its_labels(
    tmp_path: Path,
    stable: UpstreamServed,
    canary: UpstreamServed,
    staging: UpstreamServed,
    running: list[RunningProxy],
) -> None:
    app_upstream, app_served = staging  # the application the proxy fronts
    folder = tmp_path / "policies"
    folder.mkdir()
    agent = AGENT.format(stable=stable[1].base_url, canary=canary[1].base_url)
    (folder / "agent.yaml").write_text(agent, encoding="utf-8")
    files = PolicyFiles([folder])
    settings = ProxySettings(
        spans=False,
        metrics_listen=None,
        app_url=app_served.base_url,
        policy_reload_interval=0.05,
        admin_token=TOKEN,
    )
    app = build_app(
        settings,
        list(files.reload().values()),
        policy_feed=PolicyFeed(files.reload, files.kept_out),
    )
    proxy = RunningProxy(app, start_server(app, lifespan="on"))
    running.append(proxy)

    with httpx.Client(base_url=proxy.url, timeout=10) as client:
        assert client.post("/summarize").json()["error"]["code"] == "no_release"
        (folder / "summary.yaml").write_text(PROMPT_ONLY, encoding="utf-8")
        wait_until(
            lambda: client.post("/summarize").status_code == 200,
            what="the new release to be routed",
        )
        for arm, label in (("baseline", "production"), ("canary", "candidate")):
            answer = client.post(
                "/summarize/doc?x=1",
                json={"text": "hi"},
                headers={"x-coalmine-force-arm": arm, "x-coalmine-admin-token": TOKEN},
            )
            assert answer.status_code == 200
            assert answer.json()["upstream"] == "staging"
            seen = app_upstream.seen[-1]
            assert (seen.path, seen.query) == ("/summarize/doc", "x=1")
            assert seen.headers["x-coalmine-release"] == "summary"
            assert seen.headers["x-coalmine-arm"] == arm
            assert seen.headers["x-coalmine-prompt-label"] == label
        assert client.post("/agent/run").json()["upstream"] == "stable"
        assert proxy.metric("coalmine_proxy_routed_releases") == 2

        clash = PROMPT_ONLY.replace("name: summary", "name: summary-two")
        clash = clash.replace("name: summarizer", "name: summarizer-two")
        (folder / "summary-two.yaml").write_text(clash, encoding="utf-8")
        proxy.wait_for(1.0, "coalmine_proxy_policy_sets_total", outcome="refused")
        assert client.post("/summarize").status_code == 200
        assert app_upstream.seen[-1].headers["x-coalmine-release"] == "summary"
        assert proxy.metric("coalmine_proxy_routed_releases") == 2

        (folder / "summary.yaml").unlink()  # the one kept out takes the prefix over

        def routed_to_the_other() -> bool:
            client.post("/summarize")
            return app_upstream.seen[-1].headers["x-coalmine-release"] == "summary-two"

        wait_until(routed_to_the_other, what="the other release to take the prefix")
        (folder / "summary-two.yaml").unlink()
        wait_until(
            lambda: client.post("/summarize").status_code == 404,
            what="the removed release to be unrouted",
        )
        assert client.post("/agent/run").json()["upstream"] == "stable"
    assert stable[0].seen and not canary[0].seen
