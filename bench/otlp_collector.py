"""A loopback OTLP/HTTP trace collector for the span exporter benchmark: plain asyncio,
one thread, one process.

    python -m bench.otlp_collector --port 4318 [--delay-ms 0]

- ``POST`` to any path ending in ``/v1/traces``: the protobuf body is kept as it came
  (decoding waits for ``/stats``, so that the collector's own work does not slow the
  exporters down) and answered ``200`` with an empty ``ExportTraceServiceResponse``,
  after ``--delay-ms`` (a slow collector);
- ``GET /stats``: what arrived since the last reset, as JSON: requests, connections,
  bytes read from the sockets (request lines, headers and bodies), body bytes, spans
  and distinct span ids (a span sent twice counts once there), the resources and scopes
  seen, and with ``?digests=1`` a digest of every span by span id (its ids, name, kind,
  times, attributes and status, so that two exporters that deliver the same spans give
  the same map);
- ``GET /span?id=<hex>``: one span, decoded, as JSON (to show what differs);
- ``POST /reset``: forget everything.

Bytes and connections count the trace exports only, not the benchmark's own requests.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from bench.loopback_http import Answer, Connections, Request, serve_forever

TRACES_SUFFIX = "/v1/traces"


def _value(value: AnyValue) -> Any:
    """An attribute value as plain JSON: strings, booleans, numbers and lists of them."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return None if kind is None else getattr(value, kind)


def _attributes(pairs: Sequence[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def canonical(span: Span) -> dict[str, Any]:
    """What an exporter meant to say about one span, independent of field order."""
    return {
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex(),
        "name": span.name,
        "kind": int(span.kind),
        "start": span.start_time_unix_nano,
        "end": span.end_time_unix_nano,
        "attributes": _attributes(span.attributes),
        "status": [int(span.status.code), span.status.message],
    }


def digest(span: Span) -> str:
    text = json.dumps(canonical(span), sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


@dataclass
class Received:
    """Everything that arrived since the last reset."""

    bodies: list[bytes] = field(default_factory=list)
    requests: int = 0
    connections: set[int] = field(default_factory=set)
    wire_bytes: int = 0
    first_at: float | None = None
    last_at: float | None = None

    def keep(self, request: Request) -> None:
        now = time.monotonic()
        self.first_at = now if self.first_at is None else self.first_at
        self.last_at = now
        self.requests += 1
        self.connections.add(request.connection)
        self.wire_bytes += request.wire_bytes
        self.bodies.append(request.body)

    def spans(self) -> Iterator[tuple[dict[str, Any], str, Span]]:
        """Each span with its resource's attributes and its scope's name."""
        for body in self.bodies:
            export = ExportTraceServiceRequest.FromString(body)
            for resource_spans in export.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        yield resource, scope_spans.scope.name, span

    def stats(self, digests: bool) -> dict[str, Any]:
        resources: list[dict[str, Any]] = []
        scopes: set[str] = set()
        by_id: dict[str, str] = {}
        ids: set[bytes] = set()
        count = 0
        for resource, scope, span in self.spans():
            count += 1
            ids.add(span.span_id)
            scopes.add(scope)
            if resource not in resources:
                resources.append(resource)
            if digests:
                by_id[span.span_id.hex()] = digest(span)
        return {
            "requests": self.requests,
            "connections": len(self.connections),
            "wire_bytes": self.wire_bytes,
            "body_bytes": sum(len(body) for body in self.bodies),
            "spans": count,
            "distinct_spans": len(ids),
            "resources": resources,
            "scopes": sorted(scopes),
            "first_at": self.first_at,
            "last_at": self.last_at,
            "digests": by_id if digests else None,
        }

    def span(self, span_id: str) -> dict[str, Any] | None:
        for _, _, span in self.spans():
            if span.span_id.hex() == span_id:
                return canonical(span)
        return None


class Collector:
    """The collector's state and its answers."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.received = Received()

    async def answer(self, request: Request) -> Answer:
        url = urlsplit(request.target)
        query = parse_qs(url.query)
        if request.method == "POST" and url.path.endswith(TRACES_SUFFIX):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            self.received.keep(request)
            return "200 OK", "application/x-protobuf", b""
        if request.method == "POST" and url.path == "/reset":
            self.received = Received()
            return "200 OK", "application/json", b"{}"
        if url.path == "/stats":
            digests = query.get("digests", ["0"])[0] == "1"
            return "200 OK", "application/json", json.dumps(self.received.stats(digests)).encode()
        if url.path == "/span":
            span = self.received.span(query.get("id", [""])[0])
            return "200 OK", "application/json", json.dumps(span).encode()
        if url.path == "/health":
            return "200 OK", "application/json", b"{}"
        return "404 Not Found", "text/plain", b"not found"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    collector = Collector(args.delay_ms / 1000)
    asyncio.run(serve_forever(Connections(collector.answer), args.port))


if __name__ == "__main__":
    main()
