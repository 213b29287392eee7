"""The processes of one demo run: the Langfuse emulator, the agents, `coalmine run` and
the evaluator, each on a free loopback port, with the prompt versions they serve."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from coalmine.demo.processes import Processes, StartError, free_port, python
from coalmine.demo.scenarios import PROMPT, PromptVersion
from coalmine.emulator.settings import DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY

AGENTS = ("stable", "canary", "staging")
AUTH = (DEFAULT_PUBLIC_KEY, DEFAULT_SECRET_KEY)
"""The emulator's project keys."""


@dataclass
class DemoStack:
    """Where one demo run's processes listen, and the environment they share."""

    base: Path
    metrics_port: int | None = None
    processes: Processes = field(init=False)
    ports: dict[str, int] = field(init=False)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    env: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.processes = Processes(self.base)
        names = ("emulator", *AGENTS, "proxy", "admin")
        self.ports = {name: free_port() for name in names}
        self.ports["metrics"] = self.metrics_port or free_port()
        self.env = {
            **os.environ,
            "LANGFUSE_BASE_URL": self.emulator_url,
            "LANGFUSE_PUBLIC_KEY": DEFAULT_PUBLIC_KEY,
            "LANGFUSE_SECRET_KEY": DEFAULT_SECRET_KEY,
            "COALMINE_ADMIN_TOKEN": self.token,
            "COALMINE_REQUESTS_PER_MINUTE": "100000",
            "COALMINE_TICK_SECONDS": "1",
            "COALMINE_TRACE_SETTLE_SECONDS": "2",
            # the demo decides within a minute: the proxy's counts are flushed every second
            "COALMINE_AGGREGATES_FLUSH_SECONDS": "1",
            "COALMINE_SCORE_FIRST_READ_SECONDS": "5",
            "PYTHONUNBUFFERED": "1",
        }

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def emulator_url(self) -> str:
        return self.url("emulator")

    @property
    def admin_url(self) -> str:
        return self.url("admin")

    @property
    def proxy_url(self) -> str:
        return self.url("proxy")

    @property
    def metrics_url(self) -> str:
        return f"{self.url('metrics')}/metrics"

    def start_emulator(self) -> None:
        emulator = self.processes.start(
            "emulator",
            [
                python(),
                "-m",
                "coalmine.cli",
                "langfuse-emulator",
                "--port",
                str(self.ports["emulator"]),
                "--log-level",
                "warning",
            ],
            self.env,
        )
        self.processes.wait_http(emulator, f"{self.emulator_url}/api/public/health")

    def create_prompts(self, versions: Iterable[PromptVersion]) -> list[int]:
        """Create prompt versions of the demo's prompt; their version numbers."""
        created: list[int] = []
        with httpx.Client(base_url=self.emulator_url, auth=AUTH, timeout=10.0) as api:
            for version in versions:
                response = api.post(
                    "/api/public/v2/prompts",
                    json={
                        "name": PROMPT,
                        "prompt": version.text,
                        "type": "text",
                        "config": version.config,
                        "labels": list(version.labels),
                    },
                )
                response.raise_for_status()
                created.append(int(response.json()["version"]))
        return created

    def write_dataset(self, name: str, *, within: float = 60.0) -> None:
        """Write the demo's golden dataset with the Langfuse SDK, in a process of its own
        (the SDK keeps the first client of a public key for the whole process)."""
        log = self.base / "dataset.log"
        with log.open("wb") as out:
            done = subprocess.run(
                [python(), "-m", "coalmine.demo.dataset", "--name", name],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                timeout=within,
                check=False,
            )
        if done.returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise StartError(f"the dataset was not written: {' | '.join(tail)}")

    def start_agents(self, *, prompt_cache_seconds: int = 1) -> None:
        """The stable, canary and staging agents; ``prompt_cache_seconds`` 0 fetches the
        prompt for every request (the SDK's cache serves a stale version while it
        refreshes)."""
        for name in AGENTS:
            agent = self.processes.start(
                f"agent-{name}",
                [
                    python(),
                    "-m",
                    "coalmine.demo.agent",
                    "--port",
                    str(self.ports[name]),
                    "--name",
                    name,
                    "--llm-delay-ms",
                    "30",
                    "--prompt-cache-seconds",
                    str(prompt_cache_seconds),
                    "--log-level",
                    "warning",
                ],
                self.env,
            )
            self.processes.wait_http(agent, f"{self.url(name)}/healthz")

    def start_coalmine(self, policy: str) -> None:
        """`coalmine run` (proxy and controller) on the policy text."""
        policy_file = self.base / "policy.yaml"
        policy_file.write_text(policy)
        coalmine = self.processes.start(
            "coalmine-run", run_command(policy_file, self.base / "state.db", self.ports), self.env
        )
        self.processes.wait_http(coalmine, f"{self.admin_url}/healthz")

    def start_evaluator(self, speed: float) -> None:
        """The LLM-judge stand-in, scoring live traces a few seconds after they end."""
        command = evaluator_command(delay_seconds=max(3 / speed, 1), lookback_seconds=600)
        self.processes.start("evaluator", command, self.env)


def run_command(policies: Path, state: Path, ports: dict[str, int]) -> list[str]:
    """`coalmine run` on ``policies`` (a file or a directory), its proxy, admin API and
    metrics on the loopback ``ports`` of those names."""
    return [
        python(),
        "-m",
        "coalmine.cli",
        "run",
        "--policy",
        str(policies),
        "--state",
        str(state),
        "--listen",
        f"127.0.0.1:{ports['proxy']}",
        "--admin-listen",
        f"127.0.0.1:{ports['admin']}",
        "--metrics-listen",
        f"127.0.0.1:{ports['metrics']}",
        "--log-level",
        "info",
    ]


def evaluator_command(*, delay_seconds: float, lookback_seconds: float) -> list[str]:
    """The LLM-judge stand-in (``coalmine.demo.evaluator``), seeded, polling every second."""
    return [
        python(),
        "-m",
        "coalmine.demo.evaluator",
        "--delay-seconds",
        f"{delay_seconds:g}",
        "--noise",
        "0.1",
        "--seed",
        "1",
        "--interval",
        "1",
        "--lookback-seconds",
        f"{lookback_seconds:g}",
    ]
