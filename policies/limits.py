"""The bounds of a policy file, enforced while it is read, before anything is expanded.

A policy is a few hundred values; these bounds are far above any real one and far below
what a hostile or broken file needs to exhaust memory, the interpreter's stack or its
integer conversion: a file of at most 1 MiB; at most 100 anchors and 100 aliases; at
most 50 levels of nesting; scalars of at most 4096 characters, numbers of at most 100
digits; at most 10,000 values once every alias stands for what its anchor holds. Each
bound is checked as the YAML is composed into nodes and again as the loader expands
them, so a file over one is refused at the place it goes over, before it grows.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

import yaml
from yaml.events import (
    AliasEvent,
    Event,
    MappingStartEvent,
    NodeEvent,
    ScalarEvent,
    SequenceStartEvent,
)
from yaml.nodes import Node, ScalarNode

__all__ = [
    "MAX_ALIASES",
    "MAX_ANCHORS",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_NUMBER_DIGITS",
    "MAX_SCALAR_CHARS",
    "MAX_VALUES",
    "BoundedLoader",
    "LimitError",
    "depth_exceeded",
    "file_too_large",
    "values_exceeded",
]

MAX_FILE_BYTES: Final = 1 << 20
MAX_ANCHORS: Final = 100
MAX_ALIASES: Final = 100
MAX_DEPTH: Final = 50
"""Mappings and lists inside one another, the top-level mapping being the first."""
MAX_SCALAR_CHARS: Final = 4096
MAX_NUMBER_DIGITS: Final = 100
MAX_VALUES: Final = 10_000
"""Keys and values in all, counting an alias as everything its anchor holds."""

_NUMBER_TAGS: Final = frozenset({"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"})


class Mark(Protocol):
    """A position in the file, 0-based (PyYAML's pure-Python and C marks alike)."""

    @property
    def line(self) -> int: ...

    @property
    def column(self) -> int: ...


class LimitError(Exception):
    """A bound of the policy file exceeded at `mark` (a position in the file)."""

    def __init__(self, mark: Mark | None, message: str) -> None:
        super().__init__(message)
        self.mark = mark
        self.message = message


def file_too_large() -> str:
    return f"the file is larger than 1 MiB ({MAX_FILE_BYTES} bytes, the limit of a policy file)"


def depth_exceeded() -> str:
    return f"nested more than {MAX_DEPTH} levels deep (the limit of a policy file)"


def values_exceeded() -> str:
    return (
        f"the policy expands to more than {MAX_VALUES} values (counting each alias as "
        "everything its anchor holds); the limit of a policy file"
    )


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, composing nodes within the bounds above."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._anchor_count = 0
        self._alias_count = 0
        self._node_count = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event: Event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent):
            self._alias_count += 1
            if self._alias_count > MAX_ALIASES:
                raise LimitError(
                    event.start_mark,
                    f"more than {MAX_ALIASES} aliases (the limit of a policy file)",
                )
            return super().compose_node(parent, index)
        if isinstance(event, NodeEvent) and event.anchor is not None:
            self._anchor_count += 1
            if self._anchor_count > MAX_ANCHORS:
                raise LimitError(
                    event.start_mark,
                    f"more than {MAX_ANCHORS} anchors (the limit of a policy file)",
                )
        self._node_count += 1
        if self._node_count > MAX_VALUES:
            raise LimitError(event.start_mark, values_exceeded())
        if isinstance(event, ScalarEvent) and len(event.value) > MAX_SCALAR_CHARS:
            raise LimitError(
                event.start_mark,
                f"a value of more than {MAX_SCALAR_CHARS} characters (the limit of a policy file)",
            )
        if not isinstance(event, MappingStartEvent | SequenceStartEvent):
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise LimitError(event.start_mark, depth_exceeded())
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_scalar_node(self, anchor: Any) -> ScalarNode:
        node = super().compose_scalar_node(anchor)
        if node.tag in _NUMBER_TAGS:
            digits = sum(character.isalnum() for character in node.value)
            if digits > MAX_NUMBER_DIGITS:
                raise LimitError(
                    node.start_mark,
                    f"a number of {digits} digits; numbers have at most "
                    f"{MAX_NUMBER_DIGITS} digits in a policy file",
                )
        return node
