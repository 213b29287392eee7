"""What a response says it used: the tokens and cost of its OpenAI-style ``usage``
object, read from the body as it passes to the client.

Only two kinds of body are read, told apart once from the response's head: a JSON body
(``application/json`` or ``+json``) of at most ``JSON_LIMIT`` bytes, parsed once it is
complete, and a ``text/event-stream``, read event by event, of which only the current
event is held (at most ``EVENT_LIMIT`` bytes) and only events whose data holds
``"usage"`` are parsed. Anything else, and a body with a content coding other than
``identity``, is not read at all. Nothing here raises on what an upstream sent: a usage
object that cannot be read gives None and sets ``unreadable``.
"""

from __future__ import annotations

import json
import math
import re
from json.scanner import make_scanner
from typing import Any, Protocol, cast

from proxy.outcome import Usage

JSON_LIMIT = 1 << 20
"""A JSON body over this many bytes is not parsed (nor held past it)."""

EVENT_LIMIT = 64 << 10
"""A server-sent event over this many bytes is skipped (nor held past it)."""

MAX_TOKENS = (1 << 31) - 1
"""More tokens than this in one response is not a count but a malformed object."""

COST_HEADER = b"x-litellm-response-cost"
"""LiteLLM's proxy gives the request's cost in US dollars in this header."""

_USAGE = b'"usage"'
_EVENT_END = b"\n\n"
_JSON_SPACE = " \t\n\r"
_BEFORE_KEY = frozenset(b"{, \t\n\r")
"""The bytes that may come before an object's key in JSON."""
_CHAT_USAGE = re.compile(
    rb'"usage":\{"prompt_tokens":(0|[1-9][0-9]*),"completion_tokens":(0|[1-9][0-9]*)'
    rb'(?:,"total_tokens":(?:0|[1-9][0-9]*))?\}\}\Z'
)
"""A compact usage of token counts only, the last member of the text's object."""
_HEAD = frozenset({b"content-type", b"content-encoding", COST_HEADER})
_scan = make_scanner(cast("Any", json.JSONDecoder()))
"""What ``json.loads`` parses one value with, from a given index of a text."""
_MISSING = object()
_new_usage = tuple.__new__
"""What ``Usage(...)`` calls, without the Python frame of its ``__new__``."""
_new_object = object.__new__
_FLOAT_BOUND = 1 << 1000
"""Integers from here on are taken as infinite rather than converted (float overflows)."""


class UsageReader(Protocol):
    """Fed one response body chunk by chunk; says at the end what it used."""

    unreadable: bool
    """The body carried a usage object that could not be read."""

    def feed(self, chunk: bytes) -> None: ...

    def end(self) -> None:
        """The body is complete (not called when it was cut short)."""

    def result(self) -> Usage | None: ...


def _kind_and_cost(headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes | None]:
    """What kind of body the response headers announce (``_JSON``, ``_EVENTS``; 0 for
    any other, and for an encoded one, which is not read), and its cost header."""
    kind = 0
    cost: bytes | None = None
    for name, value in headers:
        if name in _HEAD:
            if name == b"content-type":
                kind = _KINDS.get(value, -1)
                if kind < 0:
                    kind = _kind_of(value)
            elif name == COST_HEADER:
                cost = value
            elif value.strip().lower() != b"identity":
                return 0, None
    return kind, cost


def reader_for(headers: list[tuple[bytes, bytes]], body: bytes | None) -> UsageReader | None:
    """A reader for the response with these headers (names lower-cased), or None when
    its body is not one that is read. ``body`` is the whole body when it came with the
    head: then the reader is made only when the body holds ``"usage"``, so that a JSON
    answer without one costs a look at its headers and one search of its bytes."""
    kind, cost = _kind_and_cost(headers)
    if kind == _JSON:
        if body is None:
            return JsonBody(cost)
        at = body.rfind(_USAGE)
        if at < 0 or len(body) > JSON_LIMIT:
            return None
        # made without __init__: a Python call costs as much as the rest of this
        whole = _new_object(WholeJson)
        whole.body, whole.at, whole.cost, whole.unreadable = body, at, cost, False
        return whole
    if kind == _EVENTS:
        events = EventStream(cost)
        if body is not None:
            events.feed(body)
        return events
    return None


def whole_usage(headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[Usage | None, bool]:
    """``reader_for(headers, body)`` and its ``result()`` for a body that came whole with
    its head, in one call and without the reader: the usage, and whether a usage object
    was there that could not be read."""
    kind, cost = _kind_and_cost(headers)
    if kind == _JSON:
        at = body.rfind(_USAGE)
        if at < 0 or len(body) > JSON_LIMIT:
            return _UNREAD
        try:
            # json_usage, in line
            chat = _CHAT_USAGE.match(body, at)
            if chat is not None and body[0] == 0x7B and body[at - 1] in _BEFORE_KEY:
                prompt, completion = chat.group(1, 2)
                prompt_tokens, completion_tokens = int(prompt), int(completion)
                if prompt_tokens <= MAX_TOKENS and completion_tokens <= MAX_TOKENS:
                    spent = None if cost is None else header_cost(cost)
                    return _new_usage(Usage, (prompt_tokens, completion_tokens, spent)), False
            return usage_of_json(body, cost, nested=False), False
        except (ValueError, RecursionError):
            return None, True
    if kind == _EVENTS:
        events = EventStream(cost)
        events.feed(body)
        return events.result(), events.unreadable
    return _UNREAD


_UNREAD: tuple[Usage | None, bool] = (None, False)


_JSON, _EVENTS = 1, 2
_KINDS: dict[bytes, int] = {}
"""Content-Type values seen, with the kind of body each names (0: not read); an
upstream sends few, and the dict stops growing at ``_KINDS_KEPT`` of them."""
_KINDS_KEPT = 256


def _kind_of(content_type: bytes) -> int:
    media = content_type.partition(b";")[0].strip().lower()
    if media == b"application/json" or media.endswith(b"+json"):
        kind = _JSON
    elif media == b"text/event-stream":
        kind = _EVENTS
    else:
        kind = 0
    if len(_KINDS) < _KINDS_KEPT:
        _KINDS[content_type] = kind
    return kind


class JsonBody:
    """A JSON body, held until it ends (or passes ``JSON_LIMIT``) and parsed then."""

    __slots__ = ("complete", "cost", "parts", "size", "unreadable")

    def __init__(self, cost: bytes | None) -> None:
        self.cost = cost
        self.parts: list[bytes] = []
        self.size = 0
        self.complete = False
        self.unreadable = False

    def feed(self, chunk: bytes) -> None:
        if self.size <= JSON_LIMIT:
            self.size += len(chunk)
            if self.size > JSON_LIMIT:
                self.parts.clear()
            else:
                self.parts.append(chunk)

    def end(self) -> None:
        self.complete = True

    def result(self) -> Usage | None:
        parts = self.parts
        if not self.complete or not parts:
            return None
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        at = body.rfind(_USAGE)
        if at < 0:
            return None
        try:
            return json_usage(body, at, self.cost)
        except (ValueError, RecursionError):
            self.unreadable = True
            return None


class WholeJson:
    """A JSON body that came whole with the head, holding ``"usage"`` at ``at``
    (its last occurrence); parsed when its usage is asked for."""

    __slots__ = ("at", "body", "cost", "unreadable")

    body: bytes
    at: int
    cost: bytes | None
    unreadable: bool

    def feed(self, chunk: bytes) -> None:
        raise TypeError("a whole body is not fed")

    def end(self) -> None:
        pass

    def result(self) -> Usage | None:
        try:
            return json_usage(self.body, self.at, self.cost)
        except (ValueError, RecursionError):
            self.unreadable = True
            return None


class EventStream:
    """A ``text/event-stream``: the usage of the last event that carried one.

    Lines may end in CRLF, LF or CR (the event-stream format allows all three); they are
    turned into LF as they come, so that an event ends at ``\\n\\n``. An event cut short by
    the end of the body is not read, as a client would not dispatch it.
    """

    __slots__ = ("cost", "cr", "pending", "skipping", "unreadable", "usage")

    def __init__(self, cost: bytes | None) -> None:
        self.cost = cost
        self.pending = bytearray()
        """The current event, as far as it has come."""
        self.cr = False
        """The last chunk ended in CR: an LF first in the next is that line's end."""
        self.skipping = False
        """The current event is over ``EVENT_LIMIT``: dropped up to its end."""
        self.usage: Usage | None = None
        self.unreadable = False

    def feed(self, chunk: bytes) -> None:
        if self.cr or b"\r" in chunk:
            chunk = self._line_feeds(chunk)
        pending = self.pending
        # an event's end may begin on the last byte held: look from there on
        start = max(len(pending) - 1, 0)
        pending += chunk
        if self.skipping:
            at = pending.find(_EVENT_END, start)
            if at < 0:
                del pending[:-1]
                return
            del pending[: at + 2]
            self.skipping = False
            start = 0
        end = pending.rfind(_EVENT_END, start)
        if end >= 0:
            if pending.find(_USAGE, 0, end) >= 0:
                for event in bytes(pending[:end]).split(_EVENT_END):
                    if _USAGE in event and len(event) <= EVENT_LIMIT:
                        self._event(event)
            del pending[: end + 2]
        if len(pending) > EVENT_LIMIT:
            self.skipping = True
            del pending[:-1]

    def _line_feeds(self, chunk: bytes) -> bytes:
        """The chunk with its line ends as LF."""
        if self.cr and chunk:
            self.cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            self.cr = chunk[-1:] == b"\r"
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        return chunk

    def end(self) -> None:
        pass

    def result(self) -> Usage | None:
        return self.usage

    def _event(self, event: bytes) -> None:
        data = event_data(event)
        if _USAGE not in data:
            return
        try:
            usage = usage_of_json(data, self.cost, nested=True)
        except (ValueError, RecursionError):
            self.usage, self.unreadable = None, True
            return
        if usage is not None:
            self.usage, self.unreadable = usage, False


def event_data(event: bytes) -> bytes:
    """An event's data: its ``data`` lines' values, joined by LF."""
    values = []
    for line in event.split(b"\n"):
        if line.startswith(b"data"):
            field, _, value = line.partition(b":")
            if field == b"data":
                values.append(value[1:] if value[:1] == b" " else value)
    return b"\n".join(values)


def json_usage(body: bytes, at: int, cost_header: bytes | None) -> Usage | None:
    """What ``usage_of_json(body, cost_header, nested=False)`` gives, ``at`` being where
    ``"usage"`` last occurs in ``body``. A chat completion that ends, compact, in a usage
    of integer token counts only is read here by one pattern, without the JSON parse
    and the calls of the general path; anything else takes that path."""
    chat = _CHAT_USAGE.match(body, at)
    if chat is not None and body[0] == 0x7B and body[at - 1] in _BEFORE_KEY:
        prompt, completion = chat.group(1, 2)
        prompt_tokens, completion_tokens = int(prompt), int(completion)
        if prompt_tokens <= MAX_TOKENS and completion_tokens <= MAX_TOKENS:
            cost = None if cost_header is None else header_cost(cost_header)
            return _new_usage(Usage, (prompt_tokens, completion_tokens, cost))
    return usage_of_json(body, cost_header, nested=False)


def usage_of_json(body: bytes, cost_header: bytes | None, *, nested: bool) -> Usage | None:
    """The usage a JSON text reports: its top-level ``usage``, or with ``nested`` (a
    Responses API stream event) its ``response``'s. None when it has none (or a null
    one); ValueError when the text is not JSON or its usage is not a usage object."""
    at = body.rfind(_USAGE)
    if at < 0:
        return None
    value = _last_key(body, at)
    if value is _MISSING or (value is None and nested and b'"response"' in body):
        document = json.loads(body)
        if type(document) is not dict:
            return None
        value = document.get("usage")
        if value is None and nested:
            response = document.get("response")
            if type(response) is dict:
                value = response.get("usage")
    return usage_of(value, cost_header)


def _last_key(body: bytes, at: int) -> object:
    """The value of the key ``"usage"`` at ``at`` when it is the last member of the
    top-level object, as an OpenAI chat completion and its chunks put it; else
    ``_MISSING``. It costs a fifth of parsing the whole body.

    In JSON a ``"`` inside a string is escaped, so ``"usage"`` after a byte that may
    precede a key can only be a key; the object that holds it closes where the text
    ends only when that object is the top-level one. Of duplicate keys the last counts,
    as with ``json.loads``."""
    if at == 0 or body[0] != 0x7B or body[at - 1] not in _BEFORE_KEY:
        return _MISSING
    try:
        text = body[at + 7 :].decode()
        after = text.lstrip(_JSON_SPACE)
        if after[:1] != ":":
            return _MISSING
        value_at = len(after) - len(after[1:].lstrip(_JSON_SPACE))
        value, end = _scan(after, value_at)
    except (ValueError, StopIteration, RecursionError):
        return _MISSING
    if after[end:].strip(_JSON_SPACE) != "}":
        return _MISSING
    return value


def usage_of(value: object, cost_header: bytes | None) -> Usage | None:
    """A ``usage`` object read: None for null; ValueError for anything but an object
    whose token counts are integers from 0 to ``MAX_TOKENS``.

    Tokens: ``prompt_tokens`` and ``completion_tokens`` (chat completions), else
    ``input_tokens`` and ``output_tokens`` (Responses API). An object with input tokens
    only (an embedding's) has 0 output tokens. Cost: ``usage.cost`` (OpenRouter's) when
    it is a finite number from 0, else the ``x-litellm-response-cost`` header's, else
    None."""
    if value is None:
        return None
    if type(value) is not dict:
        raise ValueError("usage is not an object")
    prompt = value.get("prompt_tokens")
    if prompt is None:
        prompt = value.get("input_tokens")
    completion = value.get("completion_tokens")
    if completion is None:
        completion = value.get("output_tokens", 0)
        if completion is None:
            completion = 0
    if type(prompt) is not int or type(completion) is not int:
        raise ValueError("usage has no integer token counts")
    if not (0 <= prompt <= MAX_TOKENS and 0 <= completion <= MAX_TOKENS):
        raise ValueError("usage token counts out of range")
    cost = _cost(value.get("cost"))
    if cost is None and cost_header is not None:
        cost = header_cost(cost_header)
    return _new_usage(Usage, (prompt, completion, cost))


def _cost(value: object) -> float | None:
    if type(value) is int:
        value = float(value) if value < _FLOAT_BOUND else math.inf
    if type(value) is not float or not 0.0 <= value < math.inf:
        return None
    return value


def header_cost(value: bytes) -> float | None:
    """The header's cost: a finite number from 0, else None."""
    try:
        cost = float(value)
    except ValueError:
        return None
    return cost if 0.0 <= cost < math.inf else None
