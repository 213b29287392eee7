"""The demo's dataset evaluator: grades the sample agent's answer text, deterministically.

``helpfulness`` has the Langfuse SDK's evaluator signature (``input``, ``output``,
``expected_output``, ``metadata`` keywords), so the dataset rung calls it as
``evaluator: {python: "coalmine.demo.judge:helpfulness"}`` and the SDK's
``run_experiment`` takes it as an evaluator as it is. The mock model writes each
sentence of an answer from a bank of helpful sentences or one of vague ones
(:mod:`coalmine.demo.agent.mock_llm`); the grade is the share of the answer's sentences
that are helpful, from 0 (none, or no answer text) to 1. The same answer always gets
the same grade: no noise, no model call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from langfuse import Evaluation

from coalmine.demo.agent.mock_llm import HELPFUL_SENTENCES

SCORE_NAME: Final = "helpfulness"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_HELPFUL: Final = frozenset(HELPFUL_SENTENCES)


def helpfulness(
    *,
    input: Any,
    output: Any,
    expected_output: Any = None,
    metadata: Any = None,
    **kwargs: Any,
) -> Evaluation:
    """The share of helpful sentences in the answer ``output`` (a chat completion, its
    message, or the text itself)."""
    del input, expected_output, metadata, kwargs
    sentences = split_sentences(answer_text(output))
    helpful = sum(sentence in _HELPFUL for sentence in sentences)
    value = helpful / len(sentences) if sentences else 0.0
    return Evaluation(
        name=SCORE_NAME,
        value=round(value, 6),
        comment=f"{helpful} of {len(sentences)} sentences helpful",
        data_type="NUMERIC",
    )


def answer_text(output: Any) -> str:
    """The assistant's text in an OpenAI chat completion body, in one of its choices'
    messages, or ``output`` itself when it is a string; "" when there is none."""
    if isinstance(output, str):
        return output
    if not isinstance(output, Mapping):
        return ""
    choices = output.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        return answer_text(choices[0].get("message"))
    content = output.get("content")
    return content if isinstance(content, str) else ""


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``: cut after ``.``, ``!`` or ``?`` and the spaces after."""
    return [part for part in (piece.strip() for piece in _SENTENCE_END.split(text)) if part]
