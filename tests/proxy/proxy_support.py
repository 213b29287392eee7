"""Loopback servers for proxy tests: upstreams that record what reached them, the proxy
itself on uvicorn, and policies written as YAML the way users write them."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn

from policies import Policy
from policies.loader import load_policy_text
from tests.quick_stop_server import QuickStopServer

BASE_POLICY = """\
apiVersion: coalmine/v1
kind: Release
name: {name}
target:
  prompt: {{name: support-agent}}
  upstreams: {{stable: "{stable}", canary: "{canary}"}}
routing:
{routing}
steps: [{{weight: 5}}, {{weight: 25}}, {{weight: 50}}]
{shadow}
analysis:
  metrics: [{{name: errors, source: error_rate, direction: lower, tolerance: 0.01}}]
"""


def make_policy(
    *,
    stable: str,
    canary: str,
    name: str = "support",
    routing: str = "  stickiness: {header: x-user-id}",
    shadow: str = "",
) -> Policy:
    text = BASE_POLICY.format(
        name=name, stable=stable, canary=canary, routing=routing, shadow=shadow
    )
    return load_policy_text(text, f"{name}.yaml")


@dataclass
class Seen:
    """One request as an upstream received it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """An upstream app that records requests. Paths:

    * ``/v1/chat/completions`` with ``"stream": true``: ``sse_events`` OpenAI chunks, each
      sent only after the test releases ``sse_gate``, then ``data: [DONE]``;
    * ``/hang`` (every path when ``hang_all``): answers only once ``unblock`` is set; sets
      ``cancelled`` when the caller goes away first;
    * ``/status/NNN``: answers that status;
    * anything else: JSON describing the request.
    """

    name: str
    seen: list[Seen] = field(default_factory=list)
    unblock: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)
    sse_gate: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    sse_sent: list[int] = field(default_factory=list)
    sse_events: int = 3
    hang_all: bool = False
    fail_every: int = 0
    """Answer every n-th request with a 500 (0: never)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {name.decode(): value.decode() for name, value in scope["headers"]}
        path = scope["path"]
        self.seen.append(Seen(scope["method"], path, scope["query_string"].decode(), headers, body))
        if path == "/hang" or self.hang_all:
            if await self._hang(receive):
                await _json(send, 200, {"upstream": self.name, "late": True})
        elif path.endswith("/chat/completions") and json.loads(body or b"{}").get("stream"):
            await self._sse(send)
        elif self.fail_every and len(self.seen) % self.fail_every == 0:
            await _json(send, 500, {"upstream": self.name, "error": "failed"})
        elif path.startswith("/status/"):
            await _json(send, int(path.rsplit("/", 1)[1]), {"upstream": self.name})
        else:
            await _json(
                send,
                200,
                {"upstream": self.name, "path": path, "headers": headers, "bytes": len(body)},
            )

    async def _hang(self, receive: Any) -> bool:
        """Wait for ``unblock``; False when the caller disconnected first."""
        gone = asyncio.ensure_future(receive())
        try:
            while not self.unblock.is_set():
                if gone.done():
                    self.cancelled.set()
                    return False
                await asyncio.sleep(0.005)
            return True
        finally:
            gone.cancel()

    async def _sse(self, send: Any) -> None:
        events = self.sse_events
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        try:
            for index in range(events):
                while not self.sse_gate.acquire(blocking=False):
                    await asyncio.sleep(0.002)
                chunk = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": "mock",
                    "choices": [
                        {"index": 0, "delta": {"content": f"tok{index} "}, "finish_reason": None}
                    ],
                }
                data = f"data: {json.dumps(chunk)}\n\n".encode()
                self.sse_sent.append(index)
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def _json(send: Any, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


Lifespan = Literal["auto", "on", "off"]

UpstreamServed = tuple["Upstream", "Served"]
"""An upstream app and the loopback server it runs on."""


@dataclass
class Served:
    base_url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_server(app: Any, *, lifespan: Lifespan = "off", port: int = 0) -> Served:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="error",
        lifespan=lifespan,
        http="httptools",
        loop="asyncio",
        timeout_graceful_shutdown=2,
        proxy_headers=False,
    )
    server = QuickStopServer(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    return Served(f"http://127.0.0.1:{bound}", server, thread)


@contextmanager
def serving(app: Any, *, lifespan: Lifespan = "off") -> Iterator[Served]:
    served = start_server(app, lifespan=lifespan)
    try:
        yield served
    finally:
        served.stop()


def closed_port_url() -> str:
    """A loopback URL nothing listens on."""
    import socket  # noqa: PLC0415

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def wait_until(condition: Any, *, within: float = 10.0, what: str = "condition") -> None:
    """Poll until ``condition()`` is true; fail with ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class RunningProxy:
    """A proxy app served on loopback, with its metrics at hand."""

    def __init__(self, app: Any, served: Served) -> None:
        self.app = app
        self.served = served
        self.url = served.base_url

    def metric(self, name: str, **labels: str) -> float:
        value = self.app.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else float(value)

    def wait_for(self, value: float, name: str, **labels: str) -> None:
        """Wait until a metric reaches ``value``: the proxy records a request's outcome
        just after the response has gone out."""
        wait_until(lambda: self.metric(name, **labels) == value, what=f"{name} == {value}")

    def shadow(self, outcome: str, release: str = "support") -> float:
        return self.metric("coalmine_proxy_shadow_requests_total", release=release, outcome=outcome)


def start_proxy(
    policies: list[Policy],
    running: list[RunningProxy],
    *,
    pins: dict[str, float] | None = None,
    spans: Any = None,
    **settings: Any,
) -> RunningProxy:
    """Build the proxy the way ``coalmine proxy`` does and serve it; ``running`` collects it
    so that the fixture stops it."""
    from proxy.server import build_app  # noqa: PLC0415
    from proxy.settings import ProxySettings  # noqa: PLC0415

    app = build_app(
        ProxySettings(spans=False, metrics_listen=None, **settings), policies, pins, spans=spans
    )
    proxy = RunningProxy(app, start_server(app, lifespan="on"))
    running.append(proxy)
    return proxy
