"""Reading a response's usage (tokens, cost) from its body as it passes: literal bodies
of the OpenAI shapes and of gateways, streams cut at every byte, and a seeded fuzz."""

from __future__ import annotations

import gzip
import json
import math
import random

import pytest

from proxy.outcome import Usage
from proxy.usage import (
    EVENT_LIMIT,
    JSON_LIMIT,
    MAX_TOKENS,
    UsageReader,
    json_usage,
    reader_for,
    usage_of_json,
    whole_usage,
)

JSON_HEAD = [(b"content-type", b"application/json")]
SSE_HEAD = [(b"content-type", b"text/event-stream; charset=utf-8")]

CHAT = (
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},'
    b'"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":42,"completion_tokens":7,"total_tokens":49,'
    b'"prompt_tokens_details":{"cached_tokens":0}}}'
)
RESPONSES = (
    b'{"id":"resp_1","object":"response","status":"completed","output":[],'
    b'"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":6},'
    b'"output_tokens":87,"output_tokens_details":{"reasoning_tokens":12},'
    b'"total_tokens":123},"user":null,"metadata":{}}'
)
OPENROUTER = (
    b'{"id":"gen-1","object":"chat.completion","choices":[],'
    b'"usage":{"prompt_tokens":194,"completion_tokens":2,"total_tokens":196,'
    b'"cost":0.95,"cost_details":{"upstream_inference_cost":19}}}'
)


def _chunk(content: str | None, usage: object = None, choices: bool = True) -> bytes:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}]
        if choices
        else [],
        "usage": usage,
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


INCLUDE_USAGE = (
    _chunk("Hel")
    + _chunk("lo")
    + _chunk(None, {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}, False)
    + b"data: [DONE]\n\n"
)
RESPONSES_STREAM = (
    b'event: response.created\ndata: {"type":"response.created","response":'
    b'{"id":"resp_1","status":"in_progress","usage":null},"sequence_number":0}\n\n'
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
    b'"delta":"the \\"usage\\" is","sequence_number":1}\n\n'
    b'event: response.completed\ndata: {"type":"response.completed","response":'
    b'{"id":"resp_1","status":"completed","usage":{"input_tokens":5,"output_tokens":3,'
    b'"total_tokens":8},"metadata":{}},"sequence_number":2}\n\n'
)


def read(headers: list[tuple[bytes, bytes]], *chunks: bytes, whole: bool = False) -> UsageReader:
    """The reader after the body: with ``whole``, the body came with the head."""
    if whole:
        reader = reader_for(headers, b"".join(chunks))
        assert reader is not None
        return reader
    reader = reader_for(headers, None)
    assert reader is not None
    for chunk in chunks:
        reader.feed(chunk)
    reader.end()
    return reader


def usage(headers: list[tuple[bytes, bytes]], *chunks: bytes) -> Usage | None:
    """The same answer whether the body came whole or in these chunks."""
    streamed = read(headers, *chunks).result()
    joined = b"".join(chunks)
    came_whole = reader_for(headers, joined)
    assert (came_whole.result() if came_whole is not None else None) == streamed
    return streamed


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (CHAT, Usage(42, 7, None)),
        (RESPONSES, Usage(36, 87, None)),
        (OPENROUTER, Usage(194, 2, 0.95)),
        (CHAT.replace(b"}}}", b"}} } \n"), Usage(42, 7, None)),
        # embeddings: input tokens only
        (
            b'{"object":"list","data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}',
            Usage(8, 0, None),
        ),
        # duplicate keys: the last counts, as with json.loads
        (b'{"usage":{"prompt_tokens":1},"x":1,"usage":{"prompt_tokens":2}}', Usage(2, 0, None)),
        # a usage key in a nested object only is not the response's
        (b'{"data":[{"usage":{"prompt_tokens":1,"completion_tokens":1}}]}', None),
        (b'{"data":{"usage":{"prompt_tokens":1,"completion_tokens":1}}}', None),
        (b'{"choices":[{"message":{"content":"\\"usage\\": {}"}}]}', None),
        (b'{"usage":null}', None),
        (b'{"id":"x"}', None),
        (b"", None),
        (b'{"usage":{"prompt_tokens":0,"completion_tokens":0,"cost":0}}', Usage(0, 0, 0.0)),
        (b'{"usage":{"prompt_tokens":1,"completion_tokens":1,"cost":-1}}', Usage(1, 1, None)),
        (b'{"usage":{"prompt_tokens":1,"completion_tokens":1,"cost":NaN}}', Usage(1, 1, None)),
        (b'{"usage":{"prompt_tokens":1,"completion_tokens":1,"cost":1e999}}', Usage(1, 1, None)),
        (b'{"usage":{"prompt_tokens":1,"completion_tokens":1,"cost":true}}', Usage(1, 1, None)),
        (b'{"usage":{"prompt_tokens":1,"completion_tokens":1,"cost":"0.5"}}', Usage(1, 1, None)),
        (b'{"usage":{"prompt_tokens":1,"completion_tokens":1,"cost":3}}', Usage(1, 1, 3.0)),
    ],
)
def test_json_bodies(body: bytes, expected: Usage | None) -> None:
    assert usage(JSON_HEAD, body) == expected
    reader = read(JSON_HEAD, body)
    assert not reader.unreadable


@pytest.mark.parametrize(
    "value",
    [
        b'{"prompt_tokens":-1,"completion_tokens":1}',
        b'{"prompt_tokens":1.0,"completion_tokens":1}',
        b'{"prompt_tokens":1,"completion_tokens":1.5}',
        b'{"prompt_tokens":true,"completion_tokens":1}',
        b'{"prompt_tokens":1,"completion_tokens":false}',
        b'{"prompt_tokens":"1","completion_tokens":1}',
        b'{"prompt_tokens":NaN,"completion_tokens":1}',
        b'{"prompt_tokens":1,"completion_tokens":-2}',
        b'{"prompt_tokens":%d,"completion_tokens":1}' % (MAX_TOKENS + 1),
        b'{"completion_tokens":1}',
        b"{}",
        b"[]",
        b"42",
        b'"usage"',
    ],
)
def test_malformed_usage_is_none_and_unreadable(value: bytes) -> None:
    for body in (b'{"usage":' + value + b"}", b'{"usage":' + value + b',"id":"x"}'):
        reader = read(JSON_HEAD, body)
        assert reader.result() is None
        assert reader.unreadable
        whole = read(JSON_HEAD, body, whole=True)
        assert whole.result() is None
        assert whole.unreadable


def test_a_json_content_type_with_a_body_that_is_not_json() -> None:
    reader = read(JSON_HEAD, b'{"usage": {"prompt_tokens": 1, "completion_')
    assert reader.result() is None
    assert reader.unreadable
    # without "usage" nothing is parsed, so nothing is unreadable
    assert not read(JSON_HEAD, b"not json at all").unreadable


def test_cost_from_the_litellm_header_when_the_body_gives_none() -> None:
    head = [*JSON_HEAD, (b"x-litellm-response-cost", b"0.000415")]
    assert usage(head, CHAT) == Usage(42, 7, 0.000415)
    assert usage(head, OPENROUTER) == Usage(194, 2, 0.95)  # the body's own cost first
    for bad in (b"nan", b"-1", b"inf", b"", b"$1", b"1e999"):
        assert usage([*JSON_HEAD, (b"x-litellm-response-cost", bad)], CHAT) == Usage(42, 7, None)
    # a cost without token counts is no usage
    assert usage(head, b'{"id":"x"}') is None


@pytest.mark.parametrize(
    "head",
    [
        [(b"content-type", b"text/plain")],
        [(b"content-type", b"application/octet-stream")],
        [],
        [*JSON_HEAD, (b"content-encoding", b"gzip")],
        [*SSE_HEAD, (b"content-encoding", b"br")],
        [*JSON_HEAD, (b"content-encoding", b"gzip, identity")],
    ],
)
def test_bodies_that_are_not_read(head: list[tuple[bytes, bytes]]) -> None:
    assert reader_for(head, None) is None
    assert reader_for(head, CHAT) is None


def test_content_types_that_are_read() -> None:
    for value in (b"application/json", b"Application/JSON; charset=utf-8", b"application/x+json"):
        assert usage([(b"content-type", value)], CHAT) == Usage(42, 7, None)
    assert usage([*JSON_HEAD, (b"content-encoding", b" Identity ")], CHAT) == Usage(42, 7, None)


def test_a_gzipped_body_is_not_parsed() -> None:
    assert reader_for([*JSON_HEAD, (b"content-encoding", b"gzip")], gzip.compress(CHAT)) is None


def test_a_json_body_over_the_limit_is_not_parsed() -> None:
    padding = b" " * (JSON_LIMIT - len(CHAT) + 1)
    big = CHAT[:-1] + padding + b"}"
    assert len(big) > JSON_LIMIT
    assert reader_for(JSON_HEAD, big) is None
    reader = read(JSON_HEAD, big[:1000], big[1000:])
    assert reader.result() is None
    assert not reader.unreadable
    at_limit = CHAT[:-1] + b" " * (JSON_LIMIT - len(CHAT)) + b"}"
    assert len(at_limit) == JSON_LIMIT
    assert usage(JSON_HEAD, at_limit[:5000], at_limit[5000:]) == Usage(42, 7, None)


def test_a_json_body_cut_short_gives_none_and_is_not_unreadable() -> None:
    reader = reader_for(JSON_HEAD, None)
    assert reader is not None
    reader.feed(CHAT[:-1])
    assert reader.result() is None  # no end(): the upstream or the client went away
    assert not reader.unreadable


def test_include_usage_stream_split_at_every_byte() -> None:
    expected = Usage(11, 2, None)
    assert usage(SSE_HEAD, INCLUDE_USAGE) == expected
    for at in range(len(INCLUDE_USAGE) + 1):
        assert read(SSE_HEAD, INCLUDE_USAGE[:at], INCLUDE_USAGE[at:]).result() == expected, at


def test_streams_in_byte_sized_chunks_and_other_line_ends() -> None:
    for ending in (b"\r\n", b"\r"):
        body = INCLUDE_USAGE.replace(b"\n", ending)
        assert read(SSE_HEAD, body).result() == Usage(11, 2, None)
        # CRLF split between its CR and its LF is one line end, never an event's end
        assert read(SSE_HEAD, *[body[i : i + 1] for i in range(len(body))]).result() == Usage(
            11, 2, None
        )
        for at in range(len(body) + 1):
            assert read(SSE_HEAD, body[:at], body[at:]).result() == Usage(11, 2, None), at


def test_responses_api_stream() -> None:
    assert usage(SSE_HEAD, RESPONSES_STREAM) == Usage(5, 3, None)
    chunks = [RESPONSES_STREAM[i : i + 7] for i in range(0, len(RESPONSES_STREAM), 7)]
    assert read(SSE_HEAD, *chunks).result() == Usage(5, 3, None)


def test_stream_events_and_their_data_lines() -> None:
    # data over two lines, a comment, an event name, no space after the colon
    event = (
        b': keep-alive\n\nevent: x\ndata:{"usage":{"prompt_tokens":4,\n'
        b'data: "completion_tokens":1}}\n\n'
    )
    assert usage(SSE_HEAD, event) == Usage(4, 1, None)
    # an event cut by the end of the body is not dispatched
    cut = INCLUDE_USAGE.split(b"data: [DONE]")[0].rstrip(b"\n")
    assert read(SSE_HEAD, cut).result() is None
    # the last usage an event carried counts; later null ones do not undo it
    twice = _chunk(None, {"prompt_tokens": 1, "completion_tokens": 1}, False) + INCLUDE_USAGE
    assert usage(SSE_HEAD, twice) == Usage(11, 2, None)
    assert usage(SSE_HEAD, INCLUDE_USAGE + _chunk("x")) == Usage(11, 2, None)
    # OpenRouter's cost in the last chunk
    priced = _chunk(None, {"prompt_tokens": 3, "completion_tokens": 4, "cost": 0.25}, False)
    assert usage(SSE_HEAD, priced + b"data: [DONE]\n\n") == Usage(3, 4, 0.25)
    header = [*SSE_HEAD, (b"x-litellm-response-cost", b"0.5")]
    assert usage(header, INCLUDE_USAGE) == Usage(11, 2, 0.5)


def test_a_malformed_usage_event_is_unreadable_unless_a_good_one_follows() -> None:
    bad = _chunk(None, {"prompt_tokens": -1, "completion_tokens": 1}, False)
    reader = read(SSE_HEAD, bad)
    assert reader.result() is None
    assert reader.unreadable
    reader = read(SSE_HEAD, bad + INCLUDE_USAGE)
    assert reader.result() == Usage(11, 2, None)
    assert not reader.unreadable
    reader = read(SSE_HEAD, b'data: {"usage": {"prompt_tokens": 1\n\n')
    assert reader.result() is None
    assert reader.unreadable


def test_an_event_over_the_limit_is_skipped_and_the_next_read() -> None:
    huge = b'data: {"pad":"' + b"x" * EVENT_LIMIT + b'","usage":{"prompt_tokens":9}}\n\n'
    for size in (1000, 70000):
        body = huge + INCLUDE_USAGE
        chunks = [body[i : i + size] for i in range(0, len(body), size)]
        reader = read(SSE_HEAD, *chunks)
        assert reader.result() == Usage(11, 2, None)
        reader = read(SSE_HEAD, *[huge[i : i + size] for i in range(0, len(huge), size)])
        assert reader.result() is None
        assert not reader.unreadable


def test_the_held_event_stays_bounded() -> None:
    reader = reader_for(SSE_HEAD, None)
    assert reader is not None
    for _ in range(200):
        reader.feed(b"x" * 4096)
        assert len(reader.pending) <= EVENT_LIMIT  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- fuzz

_SEEDS = [
    CHAT,
    RESPONSES,
    OPENROUTER,
    INCLUDE_USAGE,
    RESPONSES_STREAM,
    b'{"usage":{"prompt_tokens":1,"completion_tokens":2,"cost":0.5}}',
]
_ATOMS = [
    b'"usage"',
    b":",
    b",",
    b"{",
    b"}",
    b"[",
    b"]",
    b"null",
    b"true",
    b"-1",
    b"1e999",
    b"NaN",
    b"1.5",
    b"99999999999999999999",
    b'"prompt_tokens"',
    b'"completion_tokens"',
    b'"input_tokens"',
    b'"cost"',
    b"\\",
    b'"',
    b"\n\n",
    b"\r",
    b"data: ",
    b"\xff",
    b"[" * 3000,
]


def _mutate(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        at = rng.randint(0, len(data))
        if op < 0.4:
            data[at:at] = rng.choice(_ATOMS)
        elif op < 0.7 and data:
            del data[at : at + rng.randint(1, 8)]
        elif data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
    return bytes(data)


def _valid(result: Usage | None) -> bool:
    if result is None:
        return True
    prompt, completion, cost = result
    return (
        type(prompt) is int
        and type(completion) is int
        and 0 <= prompt <= MAX_TOKENS
        and 0 <= completion <= MAX_TOKENS
        and (cost is None or (type(cost) is float and math.isfinite(cost) and cost >= 0))
    )


def test_fuzz_never_raises_and_never_gives_an_invalid_usage() -> None:
    rng = random.Random(15)
    heads = [JSON_HEAD, SSE_HEAD, [*JSON_HEAD, (b"x-litellm-response-cost", b"0.1")]]
    read_any = 0
    for _ in range(5000):
        if rng.random() < 0.15:
            body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        else:
            body = _mutate(rng, rng.choice(_SEEDS))
        head = rng.choice(heads)
        cuts = sorted(rng.sample(range(len(body) + 1), min(3, len(body) + 1)))
        chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        streamed = read(head, *chunks).result()
        whole = reader_for(head, body)
        came_whole = whole.result() if whole is not None else None
        assert _valid(streamed), body
        assert _valid(came_whole), body
        if head is not SSE_HEAD:
            assert streamed == came_whole, body
        read_any += streamed is not None
    assert read_any > 100  # the mutations leave many bodies readable


def test_fuzz_the_quick_read_agrees_with_parsing_the_whole_body() -> None:
    """Valid JSON bodies: the usage read is what ``json.loads`` finds at the top level."""
    rng = random.Random(1515)
    for _ in range(2000):
        usage_value = {"prompt_tokens": rng.randint(0, 99), "completion_tokens": rng.randint(0, 9)}
        members: list[tuple[str, object]] = [
            ("id", "x"),
            ("nested", {"usage": {"prompt_tokens": 1000, "completion_tokens": 1000}}),
            ("text", '"usage": {"prompt_tokens": 5}'),
            ("usage", usage_value),
        ]
        rng.shuffle(members)
        if rng.random() < 0.2:
            members = [m for m in members if m[0] != "usage"]
        body = json.dumps(dict(members), indent=rng.choice([None, 1])).encode()
        expected_value = json.loads(body).get("usage")
        expected = (
            None
            if expected_value is None
            else Usage(expected_value["prompt_tokens"], expected_value["completion_tokens"], None)
        )
        assert usage(JSON_HEAD, body) == expected, body


@pytest.mark.parametrize(
    "tail",
    [
        b'{"prompt_tokens":42,"completion_tokens":7,"total_tokens":49}}',
        b'{"prompt_tokens":42,"completion_tokens":7}}',
        b'{"prompt_tokens":0,"completion_tokens":0,"total_tokens":0}}',
        b'{"prompt_tokens":042,"completion_tokens":7,"total_tokens":49}}',
        b'{"prompt_tokens":2147483647,"completion_tokens":2147483647}}',
        b'{"prompt_tokens":2147483648,"completion_tokens":7}}',
        b'{"prompt_tokens":42,"completion_tokens":9999999999}}',
        b'{"prompt_tokens":42,"completion_tokens":7,"total_tokens":49} }',
        b'{"prompt_tokens":42,"completion_tokens":7,"total_tokens":49}}\n',
        b'{"prompt_tokens":42,"completion_tokens":7,"cost":0.5}}',
    ],
)
@pytest.mark.parametrize("before", [b'{"id":"x",', b"{", b'{"id":"x", ', b'["x",', b'{"id":"'])
@pytest.mark.parametrize("cost", [None, b"0.25", b"nan"])
def test_the_compact_chat_usage_reads_as_the_general_path(
    tail: bytes, before: bytes, cost: bytes | None
) -> None:
    """``json_usage`` reads OpenAI's compact usage by a pattern: what it gives (a usage,
    None or ValueError) is what parsing the usage gives."""
    body = before + b'"usage":' + tail
    at = body.rfind(b'"usage"')
    try:
        expected: object = usage_of_json(body, cost, nested=False)
    except ValueError:
        expected = ValueError
    try:
        got: object = json_usage(body, at, cost)
    except ValueError:
        got = ValueError
    assert got == expected
    head = JSON_HEAD if cost is None else [*JSON_HEAD, (b"x-litellm-response-cost", cost)]
    whole = reader_for(head, body)
    assert whole is not None
    assert whole.result() == (None if expected is ValueError else expected)
    assert whole.unreadable == (expected is ValueError)
    assert whole_usage(head, body) == (whole.result(), whole.unreadable)


def _read_whole(head: list[tuple[bytes, bytes]], body: bytes) -> tuple[Usage | None, bool]:
    reader = reader_for(head, body)
    return (None, False) if reader is None else (reader.result(), reader.unreadable)


def test_fuzz_a_whole_body_reads_as_its_reader_does() -> None:
    """``whole_usage`` (the usage of a body that came whole, read in one call) gives
    what ``reader_for`` and its ``result`` give, on compact usages mangled byte by byte
    and on event streams."""
    rng = random.Random(2718)
    alphabet = b'0123456789{},:"_ abcdeilmnoprstuk-'
    compact = b'{"id":"x","usage":{"prompt_tokens":42,"completion_tokens":7,"total_tokens":49}}'
    heads = [JSON_HEAD, [*JSON_HEAD, (b"x-litellm-response-cost", b"0.5")], SSE_HEAD]
    for _ in range(5000):
        body = bytearray(compact)
        for _ in range(rng.randint(0, 3)):
            at = rng.randrange(len(body))
            change = rng.random()
            if change < 0.4:
                body[at] = rng.choice(alphabet)
            elif change < 0.7:
                del body[at]
            else:
                body.insert(at, rng.choice(alphabet))
        head = rng.choice(heads)
        whole = b"data: " + body + b"\n\n" if head is SSE_HEAD else bytes(body)
        assert whole_usage(head, whole) == _read_whole(head, whole), whole
