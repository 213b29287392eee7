"""Which requests are in their release's score sample: a keyed hash of the trace id.

The proxy marks a request sampled when ``is_sampled(trace_id, rate)`` holds, ``rate``
being the release's rate in force when the request arrived (its routing table's
``scoreSample``). The controller reads scores only for sampled traces, and can compute the
same answer for any trace id it reads: a trace tagged sampled that the hash does not
sample was tagged by someone else.

The hash sees nothing but the trace id, which is drawn at random for the request before
anything about its outcome exists, so the sample is a uniform random share of each arm's
requests, independent of their outcomes. It is monotone in the rate: a trace sampled at
one rate is sampled at every higher rate.
"""

from __future__ import annotations

from hashlib import blake2b
from typing import Final

SAMPLE_KEY: Final = b"coalmine score sample v1"
"""The hash's key: fixed, so that every proxy and the controller agree."""
_SPACE: Final = float(2**64)
# keyed once: a copy of it costs a quarter less than a new keyed hash per call
_KEYED: Final = blake2b(digest_size=8, key=SAMPLE_KEY)


def sample_point(trace_id: str) -> int:
    """The trace's point in [0, 2^64): the first 8 bytes of the keyed blake2b of the
    trace id's 16 bytes. Raises ValueError for an id that is not hex."""
    keyed = _KEYED.copy()
    keyed.update(bytes.fromhex(trace_id))
    return int.from_bytes(keyed.digest())


def is_sampled(trace_id: str, rate: float) -> bool:
    """Whether the trace is in a sample of ``rate`` (0 to 1) of all traces: rate 1 takes
    every trace (without hashing), 0 none. Raises ValueError for an id that is not hex
    (at a rate below 1)."""
    if rate >= 1.0:
        return True
    return sample_point(trace_id) < rate * _SPACE
