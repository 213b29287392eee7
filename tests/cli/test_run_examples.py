"""Every example policy under a real ``coalmine run`` process, as written: it starts (a
prompt-only release needs no upstreams), and a request to the release's path goes
through the proxy. A prompt-only release is answered by the application at ``--app-url``;
a release whose upstreams are cluster addresses reaches its arm (and, with nothing
there, is answered 502 by the proxy, not 404). And a policy file added to the watched
directory while ``coalmine run`` runs is routed, one removed is not."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from policies import EXAMPLES_DIR, Policy, load_policy
from tests.emulator.emulator_support import emulator_with_prompt
from tests.proxy.proxy_support import Upstream, serving, wait_until

pytestmark = pytest.mark.slow

TOKEN = "admin-token-for-the-examples-0123"  # 33 characters: strong enough
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))
REPO = EXAMPLES_DIR.parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def is_loopback(url: str) -> bool:
    host = httpx.URL(url).host
    return host in ("127.0.0.1", "localhost", "::1")


@pytest.fixture
def app() -> Iterator[tuple[Upstream, str]]:
    upstream = Upstream("app")
    with serving(upstream) as served:
        yield upstream, served.base_url
        upstream.unblock.set()


class Run:
    """One ``coalmine run`` process against an emulator, its proxy on ``listen``."""

    def __init__(
        self, policy: Path, tmp_path: Path, app_url: str, emulator: tuple[Any, Any]
    ) -> None:
        live, settings = emulator
        self.listen = f"127.0.0.1:{free_port()}"
        self.log_path = tmp_path / "run.log"
        environment = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("COALMINE_", "LANGFUSE_"))
        }
        environment.update(
            LANGFUSE_BASE_URL=live.base_url,
            LANGFUSE_PUBLIC_KEY=settings.public_key,
            LANGFUSE_SECRET_KEY=settings.secret_key,
            COALMINE_ADMIN_TOKEN=TOKEN,
            COALMINE_POLICY_RELOAD_INTERVAL="0.2",
            PYTHONPATH=str(REPO),
        )
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "coalmine.cli",
                "run",
                "--policy",
                str(policy),
                "--state",
                str(tmp_path / "state.db"),
                "--listen",
                self.listen,
                "--app-url",
                app_url,
                "--admin-listen",
                f"127.0.0.1:{free_port()}",
                "--metrics-listen",
                f"127.0.0.1:{free_port()}",
            ],
            cwd=tmp_path,
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def post(self, path: str) -> httpx.Response | None:
        """The proxy's answer, None while it does not listen yet."""
        assert self.process.poll() is None, self.log_path.read_text()
        try:
            return httpx.post(f"http://{self.listen}{path}", json={}, timeout=10)
        except httpx.TransportError:
            return None

    def answer(self, path: str, *, status: int | None = None) -> httpx.Response:
        """The first answer (with ``status``, when given) within a minute."""
        answers: list[httpx.Response] = []

        def answered() -> bool:
            answer = self.post(path)
            if answer is None or (status is not None and answer.status_code != status):
                return False
            answers.append(answer)
            return True

        wait_until(answered, within=60, what=f"an answer to {path} from coalmine run")
        return answers[-1]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def emulator_for(policy: Policy) -> Any:
    prompt = policy.target.prompt
    name = "unused" if prompt is None else prompt.name
    labels = {1: ["production"], 2: ["canary" if prompt is None else prompt.canary_label]}
    return emulator_with_prompt(name, labels, versions=2)


def assert_answered_by_the_app(answer: httpx.Response, app: Upstream, policy: Policy) -> None:
    assert answer.status_code == 200, answer.text
    assert answer.json()["upstream"] == "app"
    seen = app.seen[-1]
    assert seen.path == answer.json()["path"]
    assert seen.headers["x-coalmine-release"] == policy.name
    assert seen.headers["x-coalmine-arm"] in ("baseline", "canary")
    prompt = policy.target.prompt
    assert prompt is not None
    labels = {"baseline": prompt.stable_label, "canary": prompt.canary_label}
    assert seen.headers["x-coalmine-prompt-label"] == labels[seen.headers["x-coalmine-arm"]]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_an_example_runs_as_written_and_routes_a_request(
    example: Path, tmp_path: Path, app: tuple[Upstream, str]
) -> None:
    policy = load_policy(example)
    app_upstream, app_url = app
    with emulator_for(policy) as emulator:
        run = Run(example, tmp_path, app_url, emulator)
        try:
            answer = run.answer(policy.routing.path_prefix.rstrip("/") + "/v1/chat")
            upstreams = policy.target.upstreams
            if upstreams is None:
                assert_answered_by_the_app(answer, app_upstream, policy)
            elif is_loopback(upstreams.stable):
                assert answer.status_code == 200, answer.text
            else:
                assert answer.status_code in (502, 504), answer.text
                assert answer.json()["error"]["code"] != "no_release"
                assert not app_upstream.seen  # never the app: the policy names upstreams
        finally:
            run.stop()


def test_a_policy_added_to_the_watched_directory_is_routed_while_running(
    tmp_path: Path, app: tuple[Upstream, str]
) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    shutil.copy(EXAMPLES_DIR / "prompt-shadow.yaml", folder)
    added = load_policy(EXAMPLES_DIR / "prompt-canary.yaml")
    app_upstream, app_url = app
    with emulator_for(added) as emulator:
        run = Run(folder, tmp_path, app_url, emulator)
        try:
            refused = run.answer("/v1/chat")
            assert (refused.status_code, refused.json()["error"]["code"]) == (404, "no_release")
            shutil.copy(EXAMPLES_DIR / "prompt-canary.yaml", folder)
            answer = run.answer("/v1/chat", status=200)
            assert_answered_by_the_app(answer, app_upstream, added)
            (folder / "prompt-canary.yaml").unlink()
            run.answer("/v1/chat", status=404)
        finally:
            run.stop()


def test_run_serves_the_proxy_with_its_limits_and_stops_cleanly_on_sigterm(
    tmp_path: Path, app: tuple[Upstream, str]
) -> None:
    example = EXAMPLES_DIR / "prompt-canary.yaml"
    _, app_url = app
    with emulator_for(load_policy(example)) as emulator:
        run = Run(example, tmp_path, app_url, emulator)
        try:
            run.answer("/v1/chat")
            host, port = run.listen.split(":")
            with socket.create_connection((host, int(port)), timeout=10) as connection:
                line = b"x-filler: " + b"a" * 70_000 + b"\r\n"
                connection.sendall(b"GET /v1/chat HTTP/1.1\r\nHost: proxy.test\r\n" + line)
                answer = connection.recv(65536)
            assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        finally:
            run.stop()
        # the controller stopped in turn (scheduler, notifier, state), not killed by the
        # signal raised again
        assert run.process.returncode == 0, run.log_path.read_text()[-2000:]
        assert "SIGTERM: stopping" in run.log_path.read_text()
