"""Fault injection for reliability tests: slow, failing, hanging or garbled answers.

A fault applies to requests whose method and path start match it. Its spec is

    [METHOD:]PATH=OPTION[,OPTION...]

with METHOD one of GET, POST, PUT, PATCH, DELETE or ``*`` (the default: any), PATH a
path prefix, and the options

- ``status:CODE``: answer CODE (400-599) without running the route;
- ``latency:DURATION``: wait that long, then run the route (``250ms``, ``2s``);
- ``timeout:DURATION``: hold the request that long without answering, then answer 504
  (a client with a shorter timeout gives up first);
- ``malformed``: run the route and cut its JSON body in half, keeping status and headers;
- ``rate:P``: fire for a share P (0 < P <= 1, default 1) of matching requests, drawn
  from a generator seeded with ``--fault-seed``, so a run repeats;
- ``times:N``: fire at most N times, then stay off.

Examples: ``GET:/api/public/v2/observations=status:503,rate:0.5``,
``/api/public/v2/prompts=latency:300ms``, ``POST:/api/public/otel=timeout:10s,times:1``.

Faults are switched on with ``--fault SPEC`` (repeatable) or at run time through
``/emulator/faults`` (Basic auth with the project keys):

- ``GET`` lists them with their ids and how often each fired;
- ``POST {"spec": "..."}`` (or the same as fields: ``{"method", "path", "status",
  "latency", "timeout", "malformed", "rate", "times"}``) adds one, answered 201;
- ``DELETE`` removes all and re-seeds the generator; ``DELETE /emulator/faults/{id}``
  removes one.

Faults are checked in the order they were added; the first that matches and fires
applies. An answer a fault made up or changed carries the header ``x-emulator-fault``
with the fault's spec. Paths under ``/emulator/`` are never faulted.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from coalmine.emulator.auth import require_project
from coalmine.emulator.errors import ApiError
from policies.durations import format_duration, parse_duration

FAULT_HEADER = b"x-emulator-fault"
ADMIN_PREFIX = "/emulator/"
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "*"})
_OPTIONS = ("status", "latency", "timeout", "malformed", "rate", "times")


@dataclass(frozen=True)
class Fault:
    """One fault; see the module docstring for what each field does."""

    path: str
    method: str = "*"
    status: int | None = None
    latency: float = 0.0
    timeout: float | None = None
    malformed: bool = False
    rate: float = 1.0
    times: int | None = None

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method) and path.startswith(self.path)

    @property
    def spec(self) -> str:
        options = []
        if self.status is not None:
            options.append(f"status:{self.status}")
        if self.latency:
            options.append(f"latency:{format_duration(self.latency)}")
        if self.timeout is not None:
            options.append(f"timeout:{format_duration(self.timeout)}")
        if self.malformed:
            options.append("malformed")
        if self.rate != 1.0:
            options.append(f"rate:{self.rate:g}")
        if self.times is not None:
            options.append(f"times:{self.times}")
        return f"{self.method}:{self.path}={','.join(options)}"


def parse_fault(spec: str) -> Fault:
    """A fault from its spec; ValueError with the reason when it is not one."""
    target, sep, text = spec.strip().partition("=")
    if not sep or not text:
        raise ValueError(f"{spec!r}: expected [METHOD:]PATH=OPTION[,OPTION...]")
    method, path = "*", target
    if ":" in target and not target.startswith("/"):
        method, _, path = target.partition(":")
    options: dict[str, str | None] = {}
    for part in text.split(","):
        key, has_value, value = part.strip().partition(":")
        if key in options:
            raise ValueError(f"{spec!r}: {key} given twice")
        options[key] = value if has_value else None
    try:
        return build_fault(method, path, options)
    except ValueError as error:
        raise ValueError(f"{spec!r}: {error}") from None


def build_fault(method: str, path: str, options: dict[str, str | None]) -> Fault:
    """A fault from its parts, every value still text; ValueError when invalid."""
    method = method.upper()
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(sorted(METHODS))}")
    if not path.startswith("/"):
        raise ValueError(f"path {path!r} must start with /")
    fault = Fault(path=path, method=method)
    for key, value in options.items():
        if key not in _OPTIONS:
            raise ValueError(f"unknown option {key!r}; options are {', '.join(_OPTIONS)}")
        if key == "malformed":
            if value not in (None, "true", "1", "True"):
                raise ValueError("malformed takes no value")
            fault = replace(fault, malformed=True)
            continue
        if value is None or value == "":
            raise ValueError(f"{key} needs a value ({key}:...)")
        fault = _with_option(fault, key, value)
    if fault.status is None and fault.timeout is None and not (fault.latency or fault.malformed):
        raise ValueError("give at least one of status, latency, timeout, malformed")
    if sum((fault.status is not None, fault.timeout is not None, fault.malformed)) > 1:
        raise ValueError("status, timeout and malformed exclude each other")
    return fault


def _with_option(fault: Fault, key: str, value: str) -> Fault:
    if key == "status":
        if not value.isdigit() or not 400 <= int(value) <= 599:
            raise ValueError(f"status {value!r} must be a code from 400 to 599")
        return replace(fault, status=int(value))
    if key in ("latency", "timeout"):
        try:
            seconds = parse_duration(value)
        except ValueError as error:
            raise ValueError(f"{key} {value!r}: {error}") from None
        if key == "latency":
            return replace(fault, latency=seconds)
        return replace(fault, timeout=seconds)
    if key == "rate":
        try:
            rate = float(value)
        except ValueError:
            rate = -1.0
        if not 0 < rate <= 1:
            raise ValueError(f"rate {value!r} must be a number above 0 and at most 1")
        return replace(fault, rate=rate)
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"times {value!r} must be a whole number of at least 1")
    return replace(fault, times=int(value))


@dataclass
class _Entry:
    id: int
    fault: Fault
    fired: int = 0


class FaultInjector:
    """The faults in force, and the seeded generator that decides when they fire."""

    def __init__(self, faults: tuple[Fault, ...] = (), *, seed: int = 0) -> None:
        self.seed = seed
        self._random = random.Random(seed)
        self._entries: list[_Entry] = []
        self._next_id = 1
        self._lock = threading.Lock()
        for fault in faults:
            self.add(fault)

    def add(self, fault: Fault) -> int:
        with self._lock:
            entry = _Entry(self._next_id, fault)
            self._next_id += 1
            self._entries.append(entry)
            return entry.id

    def remove(self, fault_id: int) -> bool:
        with self._lock:
            kept = [entry for entry in self._entries if entry.id != fault_id]
            found = len(kept) != len(self._entries)
            self._entries = kept
            return found

    def clear(self) -> None:
        """Remove every fault and restart the generator from the seed."""
        with self._lock:
            self._entries = []
            self._random = random.Random(self.seed)

    def listing(self) -> list[dict[str, Any]]:
        with self._lock:
            return [_entry_json(entry) for entry in self._entries]

    def draw(self, method: str, path: str) -> Fault | None:
        """The fault to apply to this request, if any; counts it as fired."""
        with self._lock:
            for entry in self._entries:
                fault = entry.fault
                if not fault.matches(method, path):
                    continue
                if fault.times is not None and entry.fired >= fault.times:
                    continue
                if fault.rate < 1.0 and self._random.random() >= fault.rate:
                    continue
                entry.fired += 1
                return fault
        return None


def _entry_json(entry: _Entry) -> dict[str, Any]:
    fault = entry.fault
    return {
        "id": entry.id,
        "spec": fault.spec,
        "method": fault.method,
        "path": fault.path,
        "status": fault.status,
        "latency": format_duration(fault.latency) if fault.latency else None,
        "timeout": format_duration(fault.timeout) if fault.timeout is not None else None,
        "malformed": fault.malformed,
        "rate": fault.rate,
        "times": fault.times,
        "fired": entry.fired,
    }


class FaultMiddleware:
    """Apply the injector's faults in front of everything else (as a flaky network or
    load balancer would), so auth, limits and routes see only what gets through."""

    def __init__(self, app: Any, *, injector: FaultInjector) -> None:
        self.app = app
        self.injector = injector

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(ADMIN_PREFIX):
            await self.app(scope, receive, send)
            return
        fault = self.injector.draw(scope["method"], scope["path"])
        if fault is None:
            await self.app(scope, receive, send)
            return
        marker = (FAULT_HEADER, fault.spec.encode())
        if fault.latency:
            await asyncio.sleep(fault.latency)
        if fault.timeout is not None:
            if await _held(receive, fault.timeout):
                await _answer(send, HTTPStatus.GATEWAY_TIMEOUT, marker)
            return
        if fault.status is not None:
            await _answer(send, HTTPStatus(fault.status), marker)
            return
        if fault.malformed:
            await self.app(scope, receive, _garbling(send, marker))
            return
        await self.app(scope, receive, send)


async def _held(receive: Any, seconds: float) -> bool:
    """Wait ``seconds`` without answering; False if the client went away meanwhile."""
    try:
        async with asyncio.timeout(seconds):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return False
    except TimeoutError:
        return True


async def _answer(send: Any, status: HTTPStatus, marker: tuple[bytes, bytes]) -> None:
    body = json.dumps(
        {"message": f"{status.phrase} (fault injected by the emulator)", "error": status.phrase}
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        marker,
    ]
    await send({"type": "http.response.start", "status": int(status), "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _garbling(send: Any, marker: tuple[bytes, bytes]) -> Any:
    """A ``send`` that delivers the response with its body cut in half."""
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def garbled(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
            return
        if message["type"] != "http.response.body":
            await send(message)
            return
        chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(chunks)
        if start["status"] in (204, 304):
            await send(start)
            await send({"type": "http.response.body", "body": body})
            return
        body = body[: len(body) // 2] or b"{"
        headers = [
            (key, value)
            for key, value in start.get("headers", [])
            if key.lower() != b"content-length"
        ]
        headers += [(b"content-length", str(len(body)).encode()), marker]
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return garbled


admin_router = APIRouter(prefix="/emulator/faults", dependencies=[Depends(require_project)])


def _injector(request: Request) -> FaultInjector:
    injector: FaultInjector = request.app.state.faults
    return injector


@admin_router.get("")
def list_faults(request: Request) -> dict[str, Any]:
    injector = _injector(request)
    return {"seed": injector.seed, "faults": injector.listing()}


@admin_router.post("", status_code=201)
async def add_fault(request: Request) -> dict[str, Any]:
    """Add a fault. The body is read as JSON whatever its content type, so that a bare
    ``curl -d`` works."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, 'expected a JSON object: {"spec": "..."} or fault fields')
    try:
        if "spec" in body:
            if not isinstance(body["spec"], str) or len(body) > 1:
                raise ValueError('"spec" must be a string and come alone')
            fault = parse_fault(body["spec"])
        else:
            fault = _fault_from_fields(body)
    except ValueError as error:
        raise ApiError(400, str(error)) from None
    injector = _injector(request)
    fault_id = injector.add(fault)
    return next(item for item in injector.listing() if item["id"] == fault_id)


def _fault_from_fields(body: dict[str, Any]) -> Fault:
    fields = dict(body)
    path = fields.pop("path", None)
    method = fields.pop("method", "*")
    if not isinstance(path, str) or not isinstance(method, str):
        raise ValueError('"path" (and "method", if given) must be strings')
    options: dict[str, str | None] = {}
    for key, value in fields.items():
        if key == "malformed":
            if value is not True and value is not False:
                raise ValueError('"malformed" must be true or false')
            if value:
                options[key] = None
        elif isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f'"{key}" must be a string or a number')
        else:
            options[key] = str(value)
    return build_fault(method, path, options)


@admin_router.delete("", status_code=204)
def clear_faults(request: Request) -> Response:
    _injector(request).clear()
    return Response(status_code=204)


@admin_router.delete("/{fault_id}", status_code=204)
def remove_fault(fault_id: int, request: Request) -> Response:
    if not _injector(request).remove(fault_id):
        raise ApiError(404, f"no fault with id {fault_id}")
    return Response(status_code=204)
