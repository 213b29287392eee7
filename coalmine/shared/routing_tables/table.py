"""The routing table: what the proxy needs to route one release, written by the controller.

A small typed document per release. The controller writes a new one (with a higher
version) whenever weights or labels change; every proxy reading the same store applies it
within a second. Upstreams in a table must be ones the release's policy names: the proxy
refuses any other (a table never widens where traffic may go). A release whose policy names
no upstreams (a prompt-only release) routes both arms to "the proxy's application": the
proxy's ``app_url``, one per proxy, which no table names.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator
from pydantic.alias_generators import to_camel

from policies.model import HttpUrl, Policy, Shadow

Percent = Annotated[float, Strict(), Field(ge=0, le=100)]
Rate = Annotated[float, Strict(), Field(ge=0, le=1)]

MAX_SAMPLE_ENTRIES = 2
"""Rates a table's ``scoreSample`` lists at most: the one in force and the next."""


class _Document(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
    )


class ArmRoute(_Document):
    """Where one arm's requests go."""

    upstream: HttpUrl | None
    """Base URL of the upstream (no query or fragment); the request path is appended to
    it. None (JSON ``null``): the proxy's application (its ``app_url``), allowed only for
    a release whose policy names no ``target.upstreams``."""

    prompt_label: str | None = None
    """Langfuse label the app should fetch, sent as ``x-coalmine-prompt-label``."""


class ShadowRoute(_Document):
    """The mirrored copy of a sample of requests."""

    upstream: HttpUrl
    """Base URL of the staging upstream (no query or fragment)."""

    percent: Percent
    """Share of eligible requests mirrored, in percent."""

    methods: tuple[str, ...] = ("POST",)
    """HTTP methods that may be mirrored."""

    max_body_bytes: int = Field(default=1048576, ge=1)
    """Requests with a larger body are not mirrored."""

    max_in_flight: int = Field(default=64, ge=1)
    """Mirrored requests in flight at most; past it a copy is dropped."""


class SampleRate(_Document):
    """The share of a release's requests in its score sample from a minute on."""

    from_: Annotated[int, Strict()] = Field(alias="from", ge=0)
    """Epoch seconds, at the start of a minute: requests arriving from then on."""

    rate: Rate
    """Share of requests sampled, 0 to 1 (``coalmine.shared.sampling``)."""

    @model_validator(mode="after")
    def _whole_minute(self) -> SampleRate:
        if self.from_ % 60:
            raise ValueError(f"from: {self.from_} is not the start of a minute")
        return self


class RoutingTable(_Document):
    """The routing of one release, as the proxy applies it."""

    release: str
    """The release name (the policy's ``name``)."""

    version: int = Field(ge=0)
    """Increases with every write; a proxy applies a table only when it is newer."""

    canary_weight: Percent
    """Percent of users (by stickiness key) sent to the canary arm."""

    baseline: ArmRoute
    """The stable arm."""

    canary: ArmRoute
    """The candidate arm."""

    shadow: ShadowRoute | None = None
    """Mirroring to staging, or None for none."""

    score_sample: tuple[SampleRate, ...] = Field(default=(), max_length=MAX_SAMPLE_ENTRIES)
    """The score sample's rates, by increasing ``from``: a request is sampled at the rate
    of the last entry whose ``from`` is at or before its arrival, and at rate 1 (every
    request) when there is none. Rates change only at whole minutes, so every proxy
    switches at the same instant whenever it read the table."""

    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    """When the table was written."""

    reason: str = ""
    """Why the table changed (for people reading the store)."""

    @model_validator(mode="after")
    def _aware(self) -> RoutingTable:
        if self.updated_at.tzinfo is None:
            raise ValueError("updatedAt needs a time zone")
        starts = [entry.from_ for entry in self.score_sample]
        if any(later <= earlier for earlier, later in itertools.pairwise(starts)):
            raise ValueError(f"scoreSample: from must increase, found {starts}")
        return self

    def sample_rate(self, arrival_s: int) -> float:
        """The score sample's rate for a request arriving in the second ``arrival_s``
        (epoch seconds, rounded down)."""
        rate = 1.0
        for entry in self.score_sample:
            if entry.from_ > arrival_s:
                break
            rate = entry.rate
        return rate


def initial_table(policy: Policy, canary_weight: float = 0.0, version: int = 0) -> RoutingTable:
    """The table a release starts from: its policy's upstreams and labels, canary weight 0.

    A policy without ``target.upstreams`` (a prompt-only release) sends both arms to the
    proxy's application (upstream None); its arms differ by their prompt labels.
    """
    upstreams = policy.target.upstreams
    prompt = policy.target.prompt
    return RoutingTable(
        release=policy.name,
        version=version,
        canary_weight=float(canary_weight),
        baseline=ArmRoute(
            upstream=None if upstreams is None else upstreams.stable,
            prompt_label=prompt.stable_label if prompt else None,
        ),
        canary=ArmRoute(
            upstream=None if upstreams is None else upstreams.canary or upstreams.stable,
            prompt_label=prompt.canary_label if prompt else None,
        ),
        shadow=initial_shadow(policy),
        reason="initial",
    )


def shadow_route(policy: Policy) -> ShadowRoute | None:
    """The mirroring a policy asks for, as a routing table carries it (None: none)."""
    shadow = policy.shadow
    if shadow is None:
        return None
    return _route(shadow)


def initial_shadow(policy: Policy) -> ShadowRoute | None:
    """The mirroring of a table no rollout has set yet: a plain shadow's, but none for a
    shadow rung (``shadow.gate``), whose copies go out only while a rollout stands at it."""
    if policy.shadow is not None and policy.shadow.gate is not None:
        return None
    return shadow_route(policy)


def _route(shadow: Shadow) -> ShadowRoute:
    return ShadowRoute(
        upstream=shadow.upstream,
        percent=shadow.percent,
        methods=shadow.methods,
        max_body_bytes=shadow.max_body_bytes,
        max_in_flight=shadow.max_in_flight,
    )


def policy_upstreams(policy: Policy) -> frozenset[str]:
    """Every upstream URL a policy allows a routing table to use."""
    allowed: set[str] = set()
    if policy.target.upstreams is not None:
        allowed.add(policy.target.upstreams.stable)
        if policy.target.upstreams.canary is not None:
            allowed.add(policy.target.upstreams.canary)
    if policy.shadow is not None:
        allowed.add(policy.shadow.upstream)
    return frozenset(allowed)


def check_upstreams(table: RoutingTable, policy: Policy) -> None:
    """Raise ValueError when the table sends traffic anywhere the policy does not name:
    a live arm (baseline, canary) anywhere but the policy's stable or canary upstream
    (never to the shadow's staging upstream), shadow copies anywhere but the policy's
    shadow upstream (never to a live arm), or an arm to the proxy's application (None)
    for a policy that names upstreams of its own."""
    upstreams = policy.target.upstreams
    live = set() if upstreams is None else {upstreams.stable, upstreams.canary} - {None}
    staging = None if policy.shadow is None else policy.shadow.upstream
    where = f"routing table of '{table.release}' v{table.version}"
    arms = (("baseline", table.baseline.upstream), ("canary", table.canary.upstream))
    for arm, upstream in arms:
        if upstream is None and upstreams is not None:
            raise ValueError(
                f"{where}: {arm} goes to the proxy's application, but the release's policy "
                "names target.upstreams"
            )
        if upstream is not None and upstream not in live:
            what = (
                "the shadow's staging upstream, not one of the release's arms"
                if upstream == staging
                else "not named by the release's policy"
            )
            raise ValueError(f"{where}: {arm} upstream {upstream!r} is {what}")
    if table.shadow is not None and table.shadow.upstream != staging:
        raise ValueError(
            f"{where}: shadow upstream {table.shadow.upstream!r} is not the policy's "
            f"shadow.upstream ({'none' if staging is None else repr(staging)})"
        )
