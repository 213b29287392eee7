"""Settings of the Langfuse emulator."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

DEFAULT_PUBLIC_KEY = "pk-lf-coalmine-local"
DEFAULT_SECRET_KEY = "sk-lf-coalmine-local"
DEFAULT_MAX_BYTES = 1 << 30
MAX_BODY_BYTES = 5 * 1024 * 1024
"""Langfuse's request size limit (Next.js body parser, ``5mb``)."""


class Plan(StrEnum):
    """Langfuse Cloud plans, for their published rate limits."""

    HOBBY = "hobby"
    CORE = "core"
    PRO = "pro"


@dataclass(frozen=True)
class EmulatorSettings:
    """How one emulator instance behaves."""

    public_key: str = DEFAULT_PUBLIC_KEY
    """Username of HTTP Basic auth (Langfuse public key)."""

    secret_key: str = DEFAULT_SECRET_KEY
    """Password of HTTP Basic auth (Langfuse secret key)."""

    db: Path | None = None
    """SQLite file that keeps data across restarts; None keeps everything in memory."""

    max_bytes: int = DEFAULT_MAX_BYTES
    """Bound on the store's size. Past it, writes are refused with 507 and nothing
    already stored is lost."""

    plan: Plan | None = None
    """Apply this Langfuse Cloud plan's rate limits; None: no limits (self-hosted)."""

    project_id: str = "coalmine-local"
    """Project id reported on stored objects."""

    max_body_bytes: int = MAX_BODY_BYTES
    """Requests with a larger body are answered 413 before any route sees them."""

    faults: tuple[str, ...] = ()
    """Faults injected from the start, in the syntax of ``coalmine.emulator.faults``;
    more can be switched on and off at run time through ``/emulator/faults``."""

    fault_seed: int = 0
    """Seed of the random draws of faults with a rate below 1, so runs repeat."""
