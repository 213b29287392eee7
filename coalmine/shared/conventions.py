"""Names shared by the proxy, the app-side helper and the controller.

The proxy sets the request headers; the app reads them and tags its Langfuse traces; the
controller finds each arm's traces by the same tags. A change here changes all three.
"""

from __future__ import annotations

from typing import Final

from policies.domain import Arm

HEADER_PREFIX: Final = "x-coalmine-"
"""Every header a client sends with this prefix is removed by the proxy."""

RELEASE_HEADER: Final = "x-coalmine-release"
ARM_HEADER: Final = "x-coalmine-arm"
PROMPT_LABEL_HEADER: Final = "x-coalmine-prompt-label"
SHADOW_HEADER: Final = "x-coalmine-shadow"
SHADOW_OF_HEADER: Final = "x-coalmine-shadow-of"
SAMPLED_HEADER: Final = "x-coalmine-sampled"
"""``1`` when the request is in its release's score sample (``coalmine.shared.sampling``),
else ``0``."""
FORCE_ARM_HEADER: Final = "x-coalmine-force-arm"
"""With the admin token, pins a request to an arm (QA)."""
ADMIN_TOKEN_HEADER: Final = "x-coalmine-admin-token"
REQUEST_ID_HEADER: Final = "x-request-id"
TRACEPARENT_HEADER: Final = "traceparent"

TAG_PREFIX: Final = "coalmine:"
SAMPLED_TAG: Final = "coalmine-sampled"
"""The Langfuse trace tag of a request in its release's score sample."""


def release_tag(release: str) -> str:
    """The Langfuse trace tag of a release: ``coalmine:release:<name>``."""
    return f"{TAG_PREFIX}release:{release}"


def arm_tag(arm: Arm | str) -> str:
    """The Langfuse trace tag of an arm: ``coalmine:arm:<arm>``."""
    return f"{TAG_PREFIX}arm:{Arm(arm).value}"


def trace_tags(release: str, arm: Arm | str, sampled: bool = False) -> list[str]:
    """The tags every span of a trace carries, in a fixed order (Langfuse groups by the
    whole tag array, so the proxy and the app must send the same array); a trace in the
    score sample ends with ``SAMPLED_TAG``."""
    tags = [release_tag(release), arm_tag(arm)]
    if sampled:
        tags.append(SAMPLED_TAG)
    return tags
