"""A deterministic stand-in for an LLM whose answers are as good as the prompt.

Everything is derived from SHA-256 hashes, so the same input always gives the same
output, in any process:

* **Text and usage** depend on the prompt text and the messages only. Tokens are
  counted as one per four characters (at least one); the input counts the system
  prompt and every message plus ``MESSAGE_OVERHEAD_TOKENS`` each.
* **Quality** of an answer, in [0, 1], is the prompt's quality plus a jitter of at most
  ``±QUALITY_JITTER / 2`` drawn from the same hash. Each sentence of the answer is a
  helpful one (from ``HELPFUL_SENTENCES``) with probability equal to that quality, a
  vague one (``VAGUE_SENTENCES``) otherwise.
* **Topics**: a prompt version may be better or worse at a kind of request. When a user
  message mentions a topic word (a word starting with it, in any case: ``refund``
  matches "Refunds"), the topic's quality replaces the prompt's; when it mentions
  several, the lowest of theirs applies.
* **Errors**: a request fails when a draw seeded by its request key (the request id)
  falls below the prompt's error rate.

A prompt version sets its quality, error rate and topics in its Langfuse ``config``::

    {"quality": 0.85, "error_rate": 0.01, "topics": {"refund": 0.3}}

or, when its config has no such keys, with markers anywhere in its text:
``[[quality=0.6]]`` and ``[[error_rate=0.05]]``. Without either, ``DEFAULT_QUALITY``
and ``DEFAULT_ERROR_RATE`` apply. Values outside [0, 1] are clipped; values that are not
numbers are ignored; so are topics that are not a non-empty word with a number.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

DEFAULT_QUALITY: Final = 0.7
DEFAULT_ERROR_RATE: Final = 0.0
QUALITY_JITTER: Final = 0.1
"""Width of the band around the prompt's quality that one answer's quality falls in."""
MESSAGE_OVERHEAD_TOKENS: Final = 4
CHARS_PER_TOKEN: Final = 4

INPUT_USD_PER_TOKEN: Final = 0.50 / 1_000_000
OUTPUT_USD_PER_TOKEN: Final = 1.50 / 1_000_000

_MARKER = re.compile(r"\[\[\s*(quality|error_rate)\s*=\s*([0-9]*\.?[0-9]+)\s*\]\]")
_TOPIC_WORD = re.compile(r"^\w+$")

HELPFUL_SENTENCES: Final = (
    "I have checked your account and the order is on its way.",
    "You can reset the password from the sign-in page under 'Forgot password'.",
    "The refund was issued today and reaches your card within five working days.",
    "I have updated the shipping address on the open order for you.",
    "Your plan renews on the first of the month; you can cancel any time before that.",
    "The error appears when the browser blocks cookies; allowing them for our site fixes it.",
    "I have added a note to your case so the next agent sees the full history.",
    "The invoice is available under Billing, and I have sent a copy to your email.",
)
VAGUE_SENTENCES: Final = (
    "Thank you for reaching out.",
    "Sometimes these things take a little while.",
    "Please try again later.",
    "We appreciate your patience.",
    "It depends on a number of factors.",
    "Our team is always working to improve things.",
)


@dataclass(frozen=True)
class PromptTraits:
    """How good answers under one prompt version are, and how often they fail."""

    quality: float = DEFAULT_QUALITY
    error_rate: float = DEFAULT_ERROR_RATE
    topics: tuple[tuple[str, float], ...] = ()
    """(word, quality) for requests about a topic, by word; words in lower case."""

    @classmethod
    def of(cls, text: str, config: Mapping[str, Any] | None = None) -> PromptTraits:
        """The traits a prompt version declares: config first, then text markers."""
        found: dict[str, float] = {}
        for key, value in _MARKER.findall(text):
            found.setdefault(key, float(value))
        for key in ("quality", "error_rate"):
            value = (config or {}).get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                found[key] = float(value)
        return cls(
            quality=_clip(found.get("quality", DEFAULT_QUALITY)),
            error_rate=_clip(found.get("error_rate", DEFAULT_ERROR_RATE)),
            topics=_topics((config or {}).get("topics")),
        )

    def quality_for(self, messages: Sequence[Mapping[str, str]]) -> float:
        """The quality of an answer to ``messages``: the lowest of the topics their user
        messages mention, else the prompt's."""
        if not self.topics:
            return self.quality
        said = " ".join(m.get("content", "") for m in messages if m.get("role") == "user")
        words = {word.lower() for word in re.findall(r"\w+", said)}
        mentioned = [
            quality
            for topic, quality in self.topics
            if any(word.startswith(topic) for word in words)
        ]
        return min(mentioned, default=self.quality)


@dataclass(frozen=True)
class Completion:
    """One answer of the mock model."""

    text: str
    input_tokens: int
    output_tokens: int
    quality: float
    failed: bool

    @property
    def usage_details(self) -> dict[str, int]:
        """Token usage in Langfuse's keys."""
        return {"input": self.input_tokens, "output": self.output_tokens}

    @property
    def cost_details(self) -> dict[str, float]:
        """Cost in USD in Langfuse's keys."""
        return {
            "input": self.input_tokens * INPUT_USD_PER_TOKEN,
            "output": self.output_tokens * OUTPUT_USD_PER_TOKEN,
        }


def complete(
    prompt: str,
    messages: Sequence[Mapping[str, str]],
    traits: PromptTraits,
    *,
    request_key: str,
) -> Completion:
    """The answer to ``messages`` under the system prompt ``prompt``."""
    digest = _digest(json.dumps([prompt, [dict(m) for m in messages]], sort_keys=True))
    draws = _draws(digest)
    quality = _clip(traits.quality_for(messages) + (next(draws) - 0.5) * QUALITY_JITTER)
    sentences = []
    for _ in range(2 + int(next(draws) * 3)):
        helpful = next(draws) < quality
        bank = HELPFUL_SENTENCES if helpful else VAGUE_SENTENCES
        sentences.append(bank[int(next(draws) * len(bank))])
    text = " ".join(sentences)
    failed = _unit(_digest(f"error:{request_key}")) < traits.error_rate
    input_tokens = count_tokens(prompt) + MESSAGE_OVERHEAD_TOKENS
    input_tokens += sum(
        count_tokens(m.get("content", "")) + MESSAGE_OVERHEAD_TOKENS for m in messages
    )
    return Completion(
        text=text,
        input_tokens=input_tokens,
        output_tokens=count_tokens(text),
        quality=round(quality, 4),
        failed=failed,
    )


def count_tokens(text: str) -> int:
    """About one token per four characters, as tokenizers of English average."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def stream_pieces(text: str) -> list[str]:
    """The text cut into the pieces a streaming response sends: a word and its space."""
    return re.findall(r"\S+\s*", text) or [text]


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def _unit(digest: bytes) -> float:
    """A number in [0, 1) from the first eight bytes of a digest."""
    return int.from_bytes(digest[:8], "big") / 2**64


def _draws(seed: bytes) -> Iterator[float]:
    """An endless sequence of numbers in [0, 1) determined by ``seed``."""
    counter = 0
    while True:
        yield _unit(hashlib.sha256(seed + counter.to_bytes(8, "big")).digest())
        counter += 1


def _topics(value: object) -> tuple[tuple[str, float], ...]:
    """The valid topics of a config's ``topics`` mapping, sorted by word."""
    if not isinstance(value, Mapping):
        return ()
    found: dict[str, float] = {}
    for word, quality in value.items():
        topic = str(word).strip().lower()
        if (
            _TOPIC_WORD.match(topic)
            and isinstance(quality, int | float)
            and not isinstance(quality, bool)
        ):
            found[topic] = _clip(float(quality))
    return tuple(sorted(found.items()))


def _clip(value: float) -> float:
    return min(1.0, max(0.0, value))
