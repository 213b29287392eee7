"""A loopback webhook receiver for the notification queue benchmark: plain asyncio, one
thread, one process.

    python -m bench.webhook_receiver --port 8080

- ``POST /hook``: a JSON notification; the arrival of its ``reason`` (which the
  benchmark makes unique) is noted (``time.monotonic``, the clock every process of the
  machine shares) when its body has been read, then it is answered ``200`` after the
  delay set by the last reset;
- ``POST /reset?delay_ms=N``: forget what arrived; answer each hook after N ms from now on;
- ``GET /stats``: ``{"received": n, "duplicates": n, "arrivals": {"<reason>": seconds}}``
  since the last reset (the first arrival of each reason; ``duplicates`` counts the
  others).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

from bench.loopback_http import Answer, Connections, Request, serve_forever


class Receiver:
    def __init__(self) -> None:
        self.delay_s = 0.0
        self.arrivals: dict[str, float] = {}
        self.duplicates = 0

    async def answer(self, request: Request) -> Answer:
        url = urlsplit(request.target)
        if request.method == "POST" and url.path == "/hook":
            self._note(request.body)
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return "200 OK", "application/json", b"{}"
        if request.method == "POST" and url.path == "/reset":
            delay_ms = float(parse_qs(url.query).get("delay_ms", ["0"])[0])
            self.delay_s, self.arrivals, self.duplicates = delay_ms / 1000, {}, 0
            return "200 OK", "application/json", b"{}"
        if url.path == "/stats":
            stats = {
                "received": len(self.arrivals),
                "duplicates": self.duplicates,
                "arrivals": self.arrivals,
            }
            return "200 OK", "application/json", json.dumps(stats).encode()
        if url.path == "/health":
            return "200 OK", "application/json", b"{}"
        return "404 Not Found", "text/plain", b"not found"

    def _note(self, body: bytes) -> None:
        now = time.monotonic()
        reason = str(json.loads(body)["reason"])
        if reason in self.arrivals:
            self.duplicates += 1
        else:
            self.arrivals[reason] = now


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve_forever(Connections(Receiver().answer), args.port))


if __name__ == "__main__":
    main()
