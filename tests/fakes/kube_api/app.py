"""The ASGI app of the fake Kubernetes API server (Starlette).

One catch-all route parses the URL as the real server lays it out
(``/api/v1/namespaces/{ns}/{resource}/{name}``, ``/apis/{group}/{version}/...``, the
cluster-wide ``/api/v1/{resource}`` list, discovery), applies the test's faults (delay,
unavailability, planned failures), checks the bearer token, counts the request, and hands
it to the registry, the lister or the watch stream. Every error is a ``Status`` with
``Content-Type: application/json``; nothing escapes as a bare 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.kube_api import discovery, errors
from tests.fakes.kube_api.bodies import Query, delete_options, write_options
from tests.fakes.kube_api.errors import ApiError
from tests.fakes.kube_api.faults import Faults, injected_error
from tests.fakes.kube_api.listing import (
    ListOptions,
    list_objects,
    list_options,
    matcher,
    parse_version,
)
from tests.fakes.kube_api.registry import Outcome, Registry
from tests.fakes.kube_api.resources import BY_PATH, STATUS_BY_PATH, ResourceType
from tests.fakes.kube_api.store import Change, ObjectStore, TooOldError
from tests.fakes.kube_api.watching import encode_event, error_event, watch_event

log = logging.getLogger(__name__)

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
BODY_TYPES = ["application/json", "application/yaml"]


@dataclass
class ServerState:
    """What the app serves from, shared with the ``FakeKubeServer`` that runs it."""

    store: ObjectStore = field(default_factory=ObjectStore)
    faults: Faults = field(default_factory=Faults)
    token: str | None = None
    too_large_wait: float = 3.0
    """How long a list for a future resourceVersion waits before its 504."""
    watch_timeout: float = 1800.0
    """How long a watch without ``timeoutSeconds`` stays open."""
    address: str = "127.0.0.1"

    def __post_init__(self) -> None:
        self.registry = Registry(self.store)


@dataclass(frozen=True)
class Target:
    """A request for a resource: which one, where, and the verb it amounts to."""

    rt: ResourceType
    namespace: str | None
    name: str | None
    verb: str


def _json(body: dict[str, Any], code: int = 200, warnings: list[str] | None = None) -> Response:
    response = Response(
        json.dumps(body, separators=(",", ":")), code, media_type="application/json"
    )
    for warning in warnings or []:
        response.headers.append("Warning", "299 - " + json.dumps(warning))
    return response


def _status(error: ApiError) -> Response:
    response = _json(error.status(), error.code)
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def _as_json(raw: bytes, content_type: str) -> bytes:
    """A POST or PUT body as JSON: the server also reads YAML (and protobuf and CBOR,
    which the fake does not)."""
    if content_type in {"", "application/json"}:
        return raw
    if content_type != "application/yaml":
        raise errors.unsupported_media_type(content_type, BODY_TYPES)
    try:
        loaded = yaml.safe_load(raw.decode("utf-8", errors="replace"))
    except yaml.YAMLError as error:
        raise errors.bad_request(f"error converting YAML to JSON: yaml: {error}") from error
    return json.dumps(loaded, default=str).encode()


def _query(request: Request) -> Query:
    return {key: request.query_params.getlist(key) for key in request.query_params}


def _verb(method: str, namespace: str | None, name: str | None, watch: bool) -> str | None:
    if name is None:
        if method in {"GET", "HEAD"}:
            return "watch" if watch else "list"
        if namespace is not None:
            return {"POST": "create", "DELETE": "deletecollection"}.get(method)
        return None
    return {"GET": "get", "HEAD": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
        method
    )


class KubeApi:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def endpoint(self, request: Request) -> Response:
        try:
            faults = self.state.faults
            if faults.delay > 0:
                await asyncio.sleep(faults.delay)
            if faults.unavailable:
                raise errors.generic(503)
            self._authenticate(request)
            return await self._dispatch(request)
        except ApiError as error:
            log.debug("%s %s: %s", request.method, request.url.path, error)
            return _status(error)
        except Exception as error:
            log.exception("fake API server: %s %s failed", request.method, request.url.path)
            return _status(
                ApiError(
                    500,
                    "InternalError",
                    f"Internal error occurred: {error}",
                    {"causes": [{"message": str(error)}]},
                )
            )

    def _authenticate(self, request: Request) -> None:
        token = self.state.token
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
            raise errors.unauthorized()

    async def _dispatch(self, request: Request) -> Response:
        parts = [part for part in request.url.path.split("/") if part]
        method = request.method
        if parts in (["healthz"], ["readyz"], ["livez"]):
            return PlainTextResponse("ok")
        if parts == ["version"]:
            return _json(discovery.VERSION)
        if parts == ["api"]:
            port = request.url.port or 80
            return _json(discovery.api_versions(f"{self.state.address}:{port}"))
        if parts == ["apis"]:
            return _json(discovery.api_group_list())
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        elif len(parts) == 2 and parts[0] == "apis":
            found = discovery.api_group(parts[1])
            if found is None:
                raise errors.generic(404)
            return _json(found)
        else:
            raise errors.generic(404)
        if not rest:
            listing = discovery.api_resource_list(group, version)
            if listing is None:
                raise errors.generic(404)
            return _json(listing)
        query = _query(request)
        target = self._target(method, group, version, rest, query)
        self.state.store.count_request(target.verb, target.rt.plural)
        planned = self.state.faults.take(target.verb, target.rt.plural)
        if planned is not None:
            raise injected_error(
                planned, target.verb, target.rt.group, target.rt.plural, target.name or ""
            )
        return await self._serve(request, target, query)

    def _target(
        self, method: str, group: str, version: str, rest: list[str], query: Query
    ) -> Target:
        namespace: str | None = None
        if rest[0] == "namespaces":
            if len(rest) <= 2:
                if len(rest) == 2 and method == "GET":
                    raise errors.not_found("", "namespaces", rest[1])
                raise errors.generic(404)
            namespace, rest = rest[1], rest[2:]
        key = (group, version, rest[0])
        if len(rest) == 3:
            rt = STATUS_BY_PATH.get(key) if rest[2] == "status" else None
        else:
            rt = BY_PATH.get(key)
        if rt is None or len(rest) > 3 or (namespace is None and len(rest) >= 2):
            raise errors.generic(404)
        name = rest[1] if len(rest) >= 2 else None
        watching = (query.get("watch") or [""])[-1] in {"true", "1"}
        verb = _verb(method, namespace, name, watching)
        if verb is None or (len(rest) == 3 and verb not in {"get", "update", "patch"}):
            raise errors.generic(405)
        return Target(rt, namespace, name, verb)

    async def _serve(self, request: Request, target: Target, query: Query) -> Response:
        rt, namespace, name, verb = target.rt, target.namespace, target.name, target.verb
        registry = self.state.registry
        if verb in {"list", "watch"}:
            options = list_options(rt, query)
            if verb == "watch":
                return self._watch(rt, namespace, options)
            body = await asyncio.to_thread(
                list_objects, self.state.store, rt, namespace, options, self.state.too_large_wait
            )
            return _json(body)
        assert namespace is not None
        raw = await request.body()
        outcome: Outcome
        if verb == "get":
            return _json(registry.get(rt, namespace, name or ""))
        if verb == "delete":
            outcome = registry.delete(rt, namespace, name or "", delete_options(raw, query))
        elif verb == "deletecollection":
            matches = matcher(namespace, list_options(rt, query))
            outcome = registry.delete_collection(rt, namespace, matches, delete_options(raw, query))
        else:
            content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if verb == "patch":
                outcome = registry.patch(
                    rt,
                    namespace=namespace,
                    name=name or "",
                    content_type=content_type,
                    raw=raw,
                    options=write_options(query, "PatchOptions"),
                )
            else:
                raw = _as_json(raw, content_type)
                if verb == "create":
                    outcome = registry.create(
                        rt, namespace, raw, write_options(query, "CreateOptions")
                    )
                else:
                    outcome = registry.replace(
                        rt, namespace, name or "", raw, write_options(query, "UpdateOptions")
                    )
        return _json(outcome.body, outcome.code, outcome.warnings)

    def _watch(self, rt: ResourceType, namespace: str | None, options: ListOptions) -> Response:
        since = (
            None
            if options.resource_version in {"", "0"}
            else parse_version(options.resource_version)
        )
        timeout = float(options.timeout_seconds or self.state.watch_timeout)
        matches = matcher(namespace, options)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Change | None] = asyncio.Queue()

        def deliver(change: Change | None) -> None:
            # RuntimeError: the server's loop is gone, and nobody is listening.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, change)

        try:
            backlog, cancel = self.state.store.watch(rt.storage, since, deliver)
        except TooOldError as error:
            return Response(
                encode_event(error_event(errors.expired(str(error)))), media_type="application/json"
            )

        async def events() -> AsyncIterator[bytes]:
            try:
                for change in backlog:
                    event = watch_event(rt, change, matches)
                    if event is not None:
                        yield encode_event(event)
                deadline = loop.time() + timeout
                while (remaining := deadline - loop.time()) > 0:
                    try:
                        arrived = await asyncio.wait_for(queue.get(), remaining)
                    except TimeoutError:
                        return
                    if arrived is None:
                        return
                    event = watch_event(rt, arrived, matches)
                    if event is not None:
                        yield encode_event(event)
            finally:
                cancel()

        return StreamingResponse(events(), media_type="application/json")


def create_app(state: ServerState | None = None) -> Starlette:
    """The app; ``state`` (store, faults, token) is made fresh if not given."""
    api = KubeApi(state or ServerState())
    app = Starlette(routes=[Route("/{path:path}", api.endpoint, methods=METHODS)])
    app.state.kube = api.state
    return app
