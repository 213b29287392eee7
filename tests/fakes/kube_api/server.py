"""``FakeKubeServer``: the fake API server on uvicorn, in a background thread, on a free
127.0.0.1 port, with the hooks tests drive it by (faults, the store, a ready client).

    with FakeKubeServer(token="t") as kube:
        core = kubernetes.client.CoreV1Api(kube.api_client())
        kube.fail_next(1, status=409, verbs=["update"], resources=["configmaps"])
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from types import TracebackType

import uvicorn
from kubernetes import client

from tests.fakes.kube_api.app import ServerState, create_app
from tests.fakes.kube_api.faults import Faults
from tests.fakes.kube_api.store import ObjectStore
from tests.quick_stop_server import QuickStopServer

START_TIMEOUT = 10.0


class FakeKubeServer:
    """A fake Kubernetes API server for configmaps, leases, events and httproutes, on
    loopback."""

    def __init__(
        self,
        *,
        token: str | None = None,
        history_limit: int = 1000,
        host: str = "127.0.0.1",
        port: int = 0,
        too_large_wait: float = 3.0,
        watch_timeout: float = 1800.0,
    ) -> None:
        self.store = ObjectStore(history_limit)
        self.faults = Faults()
        self.token = token
        self.state = ServerState(
            self.store, self.faults, token, too_large_wait, watch_timeout, host
        )
        self.app = create_app(self.state)
        self.host = host
        self.port = port
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- running --------------------------------------------------------------------------

    def start(self) -> FakeKubeServer:
        if self._server is not None:
            return self
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_level="warning",
            lifespan="off",
            loop="asyncio",
            timeout_graceful_shutdown=2,
        )
        server = QuickStopServer(config)
        thread = threading.Thread(target=server.run, name="fake-kube-api", daemon=True)
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                server.should_exit = True
                raise RuntimeError("the fake Kubernetes API server did not start")
            time.sleep(0.01)
        self.port = server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """End open watches, then the server; waits for its thread."""
        if self._server is None:
            return
        self.store.close_watches()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> FakeKubeServer:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- clients --------------------------------------------------------------------------

    def api_client(self, *, token: str | None = None, anonymous: bool = False) -> client.ApiClient:
        """An official-client ``ApiClient`` for this server: no TLS, and the server's
        bearer token (or ``token``; none at all if ``anonymous``)."""
        configuration = client.Configuration(host=self.url)
        bearer = None if anonymous else (token if token is not None else self.token)
        if bearer is not None:
            configuration.api_key = {"authorization": bearer}
            configuration.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(configuration)

    # -- faults ---------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        verbs: Iterable[str] | None = None,
        resources: Iterable[str] | None = None,
    ) -> None:
        """Fail the next ``n`` matching requests with the Status the real server would
        send for ``status`` (409 on create is AlreadyExists, on any other write Conflict).
        ``verbs``: get, list, watch, create, update, patch, delete, deletecollection;
        ``resources``: configmaps, leases, events, httproutes; None matches all."""
        self.faults.fail_next(n, status, verbs, resources)

    def set_delay(self, seconds: float) -> None:
        """Make every request wait ``seconds`` before it is served (0 to stop)."""
        if seconds < 0:
            raise ValueError("the delay cannot be negative")
        self.faults.delay = seconds

    def set_unavailable(self, unavailable: bool = True) -> None:
        """Answer every request 503 ServiceUnavailable; switching it on also drops the
        open watches, as an outage would."""
        self.faults.unavailable = unavailable
        if unavailable:
            self.store.close_watches()

    def clear_faults(self) -> None:
        self.faults.clear()


__all__ = ["FakeKubeServer", "Faults", "ObjectStore"]
