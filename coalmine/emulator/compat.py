"""Where the emulator answers differently from the Langfuse 4.16.0 OpenAPI spec, and why.

Each entry is a response the spec does not describe but that the real server gives, or
that SDK 5.x needs (it targets servers newer than the spec). The test suite validates
every other response against the spec, and checks each of these on its own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpecDifference:
    """A response (method, path template, status) the spec does not describe."""

    method: str
    path: str
    status: int
    why: str


DIFFERENCES: tuple[SpecDifference, ...] = (
    SpecDifference(
        "post",
        "/api/public/v2/prompts",
        201,
        "the server answers 201 Created with the new prompt; the spec lists 200",
    ),
    SpecDifference(
        "post",
        "/api/public/scores",
        202,
        "SDK 5.x posts a list of scores and expects 202 {message: 'Accepted'} "
        "(Langfuse >= 4.59); the 4.16 spec takes one score and answers {id}",
    ),
    SpecDifference(
        "post",
        "/api/public/scores",
        207,
        "a list with rejected scores is answered 207 {accepted, rejected, errors}, "
        "as SDK 5.x expects; the 4.16 spec has no list form",
    ),
)


def difference(method: str, path: str, status: int) -> SpecDifference | None:
    """The listed difference for this response, if any."""
    for entry in DIFFERENCES:
        if (entry.method, entry.path, entry.status) == (method.lower(), path, status):
            return entry
    return None
