"""What the demo's users ask the sample agent, and how a question becomes a request."""

from __future__ import annotations

from typing import Any, Final

QUESTIONS: Final = (
    "How do I reset my password?",
    "Can I change the billing date of my plan?",
    "The export to CSV fails with a timeout, what can I do?",
    "How do I add a teammate to my workspace?",
    "Where do I find my invoices?",
    "Is there an API rate limit?",
)
"""What users ask the sample agent, and what the dataset is made of."""
REFUND_QUESTIONS: Final = (
    "I was charged twice this month, can I get a refund?",
    "How long does a refund take to reach my card?",
    "Please refund my last order, it arrived broken.",
)
"""Requests that only live traffic has: the dataset leaves them out."""
WORDINGS: Final = (
    "{q}",
    "Hi, {q}",
    "Hello! {q} Thanks.",
    "{q} I'm on the Team plan.",
    "Quick question: {q}",
    "{q} I use the mobile app.",
    "Good morning. {q}",
    "{q} This is urgent for us.",
    "{q} I'm the account owner.",
    "Hey support, {q}",
)
"""The ways the dataset asks each question: ten wordings of six questions, 60 items."""
MODEL: Final = "support-agent"


def chat_body(question: str) -> dict[str, Any]:
    """The chat-completions body that asks ``question``."""
    return {"model": MODEL, "messages": [{"role": "user", "content": question}]}
