"""``python -m coalmine.demo.agent``: serve the sample support agent on uvicorn.

Langfuse is configured from the environment, as the SDK reads it:
``LANGFUSE_PUBLIC_KEY``, ``LANGFUSE_SECRET_KEY`` and ``LANGFUSE_BASE_URL`` (or
``LANGFUSE_HOST``)::

    LANGFUSE_BASE_URL=http://127.0.0.1:3000 LANGFUSE_PUBLIC_KEY=pk-lf-coalmine-local \\
    LANGFUSE_SECRET_KEY=sk-lf-coalmine-local \\
        python -m coalmine.demo.agent --port 8001 --name canary --prompt-cache-seconds 2
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn
from langfuse import Langfuse

from coalmine.demo.agent.app import AgentSettings, create_app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m coalmine.demo.agent", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument(
        "--name", default="stable", help="deployment name for logs: stable, canary, staging"
    )
    parser.add_argument(
        "--llm-delay-ms", type=float, default=150.0, help="time the mock model takes per answer"
    )
    parser.add_argument(
        "--prompt-cache-seconds",
        type=int,
        default=None,
        help="TTL of the SDK's prompt cache (default: the SDK's, 60 s)",
    )
    parser.add_argument("--log-level", default="info", help="uvicorn and agent log level")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.llm_delay_ms < 0 or (
        args.prompt_cache_seconds is not None and args.prompt_cache_seconds < 0
    ):
        print("error: --llm-delay-ms and --prompt-cache-seconds must be >= 0", file=sys.stderr)
        return 2
    if not (os.environ.get("LANGFUSE_PUBLIC_KEY") and os.environ.get("LANGFUSE_SECRET_KEY")):
        print("error: set LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = AgentSettings(
        name=args.name,
        prompt_cache_seconds=args.prompt_cache_seconds,
        llm_delay_ms=args.llm_delay_ms,
    )
    client = Langfuse()
    try:
        uvicorn.run(
            create_app(settings, client),
            host=args.host,
            port=args.port,
            log_level=args.log_level.lower(),
        )
    finally:
        client.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
