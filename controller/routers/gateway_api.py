"""The Gateway API router: one named rule of an HTTPRoute (gateway.networking.k8s.io/v1),
which the release owns, holds its split and its mirroring.

coalmine writes only the rule's ``backendRefs`` and its ``RequestMirror`` filter; the
rule's name, ``matches``, ``timeouts`` and other filters, the route's other rules and
every other field are the team's, and are written back as read. Every write is a
replace at the ``resourceVersion`` read, so an edit made meanwhile is never overwritten
blindly: the write fails with a conflict and is tried again on the route as it now is.
Which release owns which rule is recorded in the route's annotation
``coalmine.dev/owned-rules`` (JSON, rule name to release); a rule owned by another release
is refused.

What the rule holds:

- an agent release: ``backendRefs`` to the stable and the canary Service, weighted in
  hundredths of a percent (a weight of 12.5% is 1250 against 8750);
- a prompt release: two ``backendRefs`` to the same stable Service, each with a
  ``RequestHeaderModifier`` that sets the arm, release and prompt-label headers the app
  helper reads (``set`` replaces what a client sent, so a client cannot pick its arm);
- shadow: a ``RequestMirror`` filter to the mirror Service with ``percent`` (or
  ``fraction`` for a share that is not a whole percent). The mirrored copy carries the
  primary's headers: the mirror Service must serve the candidate by itself.

Defaults a real API server writes (a backendRef's ``group`` and ``kind``) are written
explicitly, so that a rule read back compares equal to the rule wanted.

Not sticky: the Gateway API's standard channel (v1.6) has no session persistence, so
each request is split afresh; a user may see both versions. The judge's statistics do
not need stickiness, but users may notice; keep weights low or use coalmine's proxy where
that matters.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Final

from coalmine.shared.conventions import ARM_HEADER, PROMPT_LABEL_HEADER, RELEASE_HEADER
from coalmine.shared.kube.client import KubeConflictError, KubeNotFoundError, kube_call
from coalmine.shared.routing_tables.table import ShadowRoute
from controller.errors import RoutingConflictError
from policies.domain import Arm
from policies.model import GatewayApiRoute, Policy, ServiceRef

GROUP: Final = "gateway.networking.k8s.io"
VERSION: Final = "v1"
PLURAL: Final = "httproutes"
OWNED_RULES: Final = "coalmine.dev/owned-rules"
"""Annotation of the route: which release owns which of its rules (JSON)."""
WEIGHT_SCALE: Final = 100
"""backendRef weight units per percent of traffic."""
WRITE_ATTEMPTS: Final = 5


class GatewayApiRouter:
    """Writes the releases' HTTPRoute rules through the official Kubernetes client."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes import client  # noqa: PLC0415

        self._api = client.CustomObjectsApi(api_client)
        self.namespace = namespace
        """The namespace of routes whose policy names none (the controller's)."""

    def set_routes(self, policy: Policy, weight: float, shadow: ShadowRoute | None) -> None:
        """Make the release's rule hold ``weight`` and ``shadow``. Raises
        RoutingConflictError (temporary: no route or rule yet, or edits racing the
        write) or ValueError (permanent: the rule belongs to another release)."""
        gateway = _gateway(policy)
        for _ in range(WRITE_ATTEMPTS):
            route = self._read(gateway)
            index = _rule_index(route, gateway, self._where(gateway))
            owners = _owners(route)
            owner = owners.get(gateway.rule)
            if owner not in (None, policy.name):
                raise ValueError(
                    f"{self._where(gateway)}: rule '{gateway.rule}' is owned by release "
                    f"'{owner}' ({OWNED_RULES})"
                )
            rules = route["spec"]["rules"]
            wanted = wanted_rule(policy, rules[index], weight, shadow)
            if rules[index] == wanted and owner == policy.name:
                return
            written = copy.deepcopy(route)
            written["spec"]["rules"][index] = wanted
            annotations = written["metadata"].setdefault("annotations", {}) or {}
            written["metadata"]["annotations"] = annotations
            annotations[OWNED_RULES] = json.dumps(
                {**owners, gateway.rule: policy.name}, sort_keys=True
            )
            try:
                kube_call(
                    f"replace {self._where(gateway)}",
                    self._api.replace_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    gateway.namespace or self.namespace,
                    PLURAL,
                    gateway.http_route,
                    written,
                )
                return
            except KubeConflictError:
                continue
            except KubeNotFoundError:
                break
        raise RoutingConflictError(
            f"{self._where(gateway)} keeps changing under the writer, or went away"
        )

    def drift(self, policy: Policy, weight: float, shadow: ShadowRoute | None) -> str | None:
        gateway = _gateway(policy)
        try:
            route = self._read(gateway)
            index = _rule_index(route, gateway, self._where(gateway))
        except RoutingConflictError as error:
            return str(error)
        rule = route["spec"]["rules"][index]
        if rule == wanted_rule(policy, rule, weight, shadow):
            return None
        return f"{self._where(gateway)} rule '{gateway.rule}' holds {describe_rule(rule)}"

    def _read(self, gateway: GatewayApiRoute) -> dict[str, Any]:
        where = self._where(gateway)
        try:
            route: dict[str, Any] = kube_call(
                f"read {where}",
                self._api.get_namespaced_custom_object,
                GROUP,
                VERSION,
                gateway.namespace or self.namespace,
                PLURAL,
                gateway.http_route,
            )
        except KubeNotFoundError:
            raise RoutingConflictError(
                f"{where} does not exist: create it with a rule named '{gateway.rule}'"
            ) from None
        return route

    def _where(self, gateway: GatewayApiRoute) -> str:
        return f"HTTPRoute {gateway.namespace or self.namespace}/{gateway.http_route}"


def wanted_rule(
    policy: Policy, rule: dict[str, Any], weight: float, shadow: ShadowRoute | None
) -> dict[str, Any]:
    """``rule`` as it must be for the release's ``weight`` and ``shadow``: its
    ``backendRefs`` and ``RequestMirror`` filter replaced, the rest as it is."""
    gateway = _gateway(policy)
    canary = round(weight * WEIGHT_SCALE)
    stable = 100 * WEIGHT_SCALE - canary
    if gateway.canary is not None:
        refs = [_backend(gateway.stable, stable), _backend(gateway.canary, canary)]
    else:
        prompt = policy.target.prompt
        labels = (None, None) if prompt is None else (prompt.stable_label, prompt.canary_label)
        refs = [
            _backend(gateway.stable, stable, _arm_headers(policy.name, Arm.BASELINE, labels[0])),
            _backend(gateway.stable, canary, _arm_headers(policy.name, Arm.CANARY, labels[1])),
        ]
    filters = [f for f in rule.get("filters") or [] if f.get("type") != "RequestMirror"]
    if shadow is not None:
        if gateway.mirror is None:
            raise ValueError("routing.gatewayApi.mirror is needed to mirror")
        filters.append(_mirror(gateway.mirror, shadow.percent))
    wanted = {key: value for key, value in rule.items() if key != "filters"}
    wanted["backendRefs"] = refs
    if filters:
        wanted["filters"] = filters
    return wanted


def describe_rule(rule: dict[str, Any]) -> str:
    """Where a rule sends requests, for people: its backends' weights and its mirror."""
    refs = ", ".join(
        f"{ref.get('name')}:{ref.get('port')} weight {ref.get('weight', 1)}"
        for ref in rule.get("backendRefs") or []
    )
    mirrors = [
        f.get("requestMirror", {})
        for f in rule.get("filters") or []
        if f.get("type") == "RequestMirror"
    ]
    mirrored = ", ".join(
        f"{m.get('backendRef', {}).get('name')} {m.get('percent', m.get('fraction'))}"
        for m in mirrors
    )
    return f"backends [{refs or 'none'}], mirror [{mirrored or 'none'}]"


def _gateway(policy: Policy) -> GatewayApiRoute:
    gateway = policy.routing.gateway_api
    if gateway is None:
        raise ValueError(f"release '{policy.name}': routing.gatewayApi is not set")
    return gateway


def _rule_index(route: dict[str, Any], gateway: GatewayApiRoute, where: str) -> int:
    rules = (route.get("spec") or {}).get("rules") or []
    for index, rule in enumerate(rules):
        if isinstance(rule, dict) and rule.get("name") == gateway.rule:
            return index
    raise RoutingConflictError(
        f"{where} has no rule named '{gateway.rule}': add it (with its matches); coalmine "
        "fills in where its requests go"
    )


def _owners(route: dict[str, Any]) -> dict[str, str]:
    annotations = (route.get("metadata") or {}).get("annotations") or {}
    try:
        owners = json.loads(annotations.get(OWNED_RULES, "{}"))
    except ValueError:
        return {}
    if not isinstance(owners, dict):
        return {}
    return {str(rule): str(release) for rule, release in owners.items()}


def _backend(
    service: ServiceRef, weight: int, headers: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    ref: dict[str, Any] = {
        "group": "",
        "kind": "Service",
        "name": service.name,
        "port": service.port,
        "weight": weight,
    }
    if headers:
        ref["filters"] = [
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": headers}}
        ]
    return ref


def _arm_headers(release: str, arm: Arm, label: str | None) -> list[dict[str, str]]:
    headers = [
        {"name": ARM_HEADER, "value": arm.value},
        {"name": RELEASE_HEADER, "value": release},
    ]
    if label is not None:
        headers.append({"name": PROMPT_LABEL_HEADER, "value": label})
    return headers


def _mirror(service: ServiceRef, percent: float) -> dict[str, Any]:
    mirror: dict[str, Any] = {
        "backendRef": {"group": "", "kind": "Service", "name": service.name, "port": service.port}
    }
    if float(percent).is_integer():
        mirror["percent"] = int(percent)
    else:
        mirror["fraction"] = {"numerator": round(percent * 10_000), "denominator": 1_000_000}
    return {"type": "RequestMirror", "requestMirror": mirror}
