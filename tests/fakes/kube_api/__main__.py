"""``python -m tests.fakes.kube_api``: run the fake Kubernetes API server until SIGTERM or
SIGINT, printing its URL first::

    python -m tests.fakes.kube_api --port 0 --token secret
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from tests.fakes.kube_api.server import FakeKubeServer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.kube_api", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    parser.add_argument("--token", default=None, help="bearer token every request must carry")
    parser.add_argument(
        "--history-limit", type=int, default=1000, help="changes kept for watches and lists"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.history_limit < 1 or not 0 <= args.port <= 65535:
        print("error: --history-limit must be >= 1 and --port a port number", file=sys.stderr)
        return 2
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server = FakeKubeServer(
        token=args.token, history_limit=args.history_limit, host=args.host, port=args.port
    )
    with server:
        print(server.url, flush=True)
        while not stopping.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
