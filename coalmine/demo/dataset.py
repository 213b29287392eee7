"""The demo's golden dataset: support questions as chat-completions bodies, written into
a Langfuse project with the Langfuse SDK.

The items are the questions users ask the sample agent, each in a few wordings, as the
body the agent's ``POST /v1/chat/completions`` takes (``{"model", "messages"}``). They
leave out refund requests on purpose: those only come with live traffic, so a candidate
that is poor at refunds passes the dataset and is caught in shadow.

    LANGFUSE_BASE_URL=http://127.0.0.1:3000 LANGFUSE_PUBLIC_KEY=pk-lf-coalmine-local \\
    LANGFUSE_SECRET_KEY=sk-lf-coalmine-local \\
        python -m coalmine.demo.dataset --name support-agent-golden

The SDK keeps one client per public key in a process, however many are constructed,
and it keeps the first one's host: the demo runs this command as a process of its own,
so that each demo writes to its own emulator.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from typing import Any, Final

from coalmine.demo.questions import QUESTIONS, WORDINGS, chat_body

DEFAULT_NAME: Final = "support-agent-golden"
_ITEM_NAMESPACE: Final = uuid.UUID("1d3c6a52-07a4-4f0e-9d38-5b2f3d8e7a61")


def items() -> list[dict[str, Any]]:
    """The dataset's items, each with its input and the question it asks in metadata."""
    return [
        {"input": chat_body(wording.format(q=question)), "metadata": {"question": question}}
        for question in QUESTIONS
        for wording in WORDINGS
    ]


def item_id(dataset: str, index: int) -> str:
    """A stable id per dataset and item: written again, an item replaces itself."""
    return str(uuid.uuid5(_ITEM_NAMESPACE, f"{dataset}/{index}"))


def write(name: str) -> int:
    """Create dataset ``name`` and its items in the project the environment names;
    the number of items written."""
    from langfuse import Langfuse  # noqa: PLC0415  (only this command needs the SDK)

    client = Langfuse(tracing_enabled=False)
    try:
        client.create_dataset(
            name=name,
            description="Support questions for the dataset rung of coalmine's demo",
            metadata={"source": "coalmine.demo.dataset"},
        )
        written = 0
        for index, item in enumerate(items()):
            client.create_dataset_item(
                dataset_name=name,
                id=item_id(name, index),
                input=item["input"],
                metadata=item["metadata"],
            )
            written += 1
        return written
    finally:
        client.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coalmine.demo.dataset",
        description="Write the demo's golden dataset into the Langfuse project.",
    )
    parser.add_argument("--name", default=DEFAULT_NAME, help="the dataset's name")
    args = parser.parse_args(argv)
    if not (os.environ.get("LANGFUSE_PUBLIC_KEY") and os.environ.get("LANGFUSE_SECRET_KEY")):
        print("error: set LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY", file=sys.stderr)
        return 2
    written = write(args.name)
    print(f"dataset {args.name}: {written} items")
    return 0


if __name__ == "__main__":
    sys.exit(main())
