"""Where a dataset run sends each arm's calls, and with which headers.

A prompt release has one application: both arms call it, told by coalmine's headers
which prompt label to fetch, as the proxy tells it for live requests. An agent release
calls each version's upstream directly (the stable one for the baseline, the canary one
for the candidate), with the prompt label headers too when a prompt is also released;
behind a Gateway API route, its stable and canary Services by their cluster DNS names
(short names resolve in the controller's own namespace).
"""

from __future__ import annotations

from dataclasses import dataclass

from coalmine.shared.conventions import ARM_HEADER, PROMPT_LABEL_HEADER, RELEASE_HEADER
from policies.domain import Arm
from policies.model import Policy

__all__ = ["ArmEndpoint", "arm_endpoints"]


@dataclass(frozen=True, slots=True)
class ArmEndpoint:
    """One arm as the dataset run calls it."""

    url: str
    """Base URL; the gate's path is appended."""
    headers: tuple[tuple[str, str], ...]


def arm_endpoints(policy: Policy, app_url: str | None) -> dict[Arm, ArmEndpoint]:
    """The baseline (``Arm.BASELINE``) and the candidate (``Arm.CANARY``) of a release.

    ``ValueError`` when a prompt release has no ``app_url``, or an agent release has no
    candidate (no canary upstream and no prompt)."""
    target = policy.target
    prompt = target.prompt
    upstreams = target.upstreams
    gateway = policy.routing.gateway_api
    if gateway is not None and gateway.canary is not None:
        # an agent behind a Gateway API route: its Services, by cluster DNS
        where = "" if gateway.namespace is None else f".{gateway.namespace}.svc"
        urls = {
            arm: f"http://{service.name}{where}:{service.port}"
            for arm, service in ((Arm.BASELINE, gateway.stable), (Arm.CANARY, gateway.canary))
        }
    elif upstreams is None:
        if not app_url:
            raise ValueError(
                f"release '{policy.name}' releases a prompt, so its dataset items are sent "
                "to the application, and no application URL is configured"
            )
        urls = {Arm.BASELINE: app_url, Arm.CANARY: app_url}
    else:
        if upstreams.canary is None and prompt is None:
            raise ValueError(
                f"release '{policy.name}' has no canary upstream to run the dataset on"
            )
        urls = {Arm.BASELINE: upstreams.stable, Arm.CANARY: upstreams.canary or upstreams.stable}
    labels = {}
    if prompt is not None:
        labels = {Arm.BASELINE: prompt.stable_label, Arm.CANARY: prompt.canary_label}
    endpoints = {}
    for arm, url in urls.items():
        headers = [(RELEASE_HEADER, policy.name), (ARM_HEADER, arm.value)]
        if arm in labels:
            headers.append((PROMPT_LABEL_HEADER, labels[arm]))
        endpoints[arm] = ArmEndpoint(url=url, headers=tuple(headers))
    return endpoints
