"""From a rollback decision to the route written: the Gateway API router against the
proxies' routing table, on the fake Kubernetes API server.

    python -m bench.gateway_rollback [--rollbacks 100] [--out bench/out]

The fake API server (``python -m tests.fakes.kube_api``) runs in its own process and
validates every HTTPRoute write against the CRD's schema and CEL rules, as a real one
does. A controller (real state file, fake labels and traffic, as the tests' rig) drives
an agent release: ``coalmine start`` puts it at its first step (weight 10), then
``coalmine rollback`` is timed, from the call to its return, when the decision is logged
and its actions carried out (the route written and read back). Compared, in the same
run:

- ``gatewayApi``: the release's rule of an HTTPRoute (``GatewayApiRouter``: a GET and a
  PUT at the read ``resourceVersion``);
- reference: the proxies' routing table in the state file (``ProxyTableRouter``), the
  default, which every proxy applies within a second;
- floor: a bare GET and PUT of the same route with the official client, no controller.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.cluster_speed import ApiServer
from controller.actions import Routers
from controller.routers import GatewayApiRouter, NoopRouter, ProxyTableRouter
from controller.routers.gateway_api import GROUP, PLURAL, VERSION
from policies import load_policy_text
from policies.domain import Phase
from policies.model import RoutingProvider
from tests.controller.release_rig import POLICY, RELEASE, Rig, make_rig

NAMESPACE = "default"
ROUTE = "support-route"
GATEWAY_POLICY = POLICY.replace(
    "  prompt: {name: support-agent, stableLabel: production, canaryLabel: canary}\n"
    '  upstreams: {stable: "http://127.0.0.1:9"}\n',
    "  version: v2\n",
).replace(
    "routing:\n",
    "routing:\n"
    "  provider: gatewayApi\n"
    "  gatewayApi:\n"
    f"    httpRoute: {ROUTE}\n"
    "    rule: support-canary\n"
    "    stable: {name: support-stable, port: 8080}\n"
    "    canary: {name: support-canary, port: 8080}\n",
)
TABLE_POLICY = POLICY.replace(
    '  upstreams: {stable: "http://127.0.0.1:9"}\n',
    '  upstreams: {stable: "http://127.0.0.1:9", canary: "http://127.0.0.1:10"}\n',
).replace(
    "  prompt: {name: support-agent, stableLabel: production, canaryLabel: canary}\n",
    "  version: v2\n",
)


def _route() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HTTPRoute",
        "metadata": {"name": ROUTE, "namespace": NAMESPACE},
        "spec": {
            "parentRefs": [{"name": "gateway"}],
            "rules": [
                {
                    "name": "support-canary",
                    "matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
                    "backendRefs": [{"name": "support-stable", "port": 8080}],
                }
            ],
        },
    }


def _rollbacks(rig: Rig, count: int, written: Any) -> list[float]:
    """Seconds of each ``coalmine rollback`` from a first step, checked written."""
    seconds: list[float] = []
    rig.run(1)  # the first rollout starts by itself
    for _ in range(count):
        if rig.release().phase is not Phase.CANARY:
            rig.now += 60.0
            rig.controller.manual(RELEASE, "start", actor="bench", now=rig.now)
        assert rig.release().phase is Phase.CANARY, rig.release()
        assert written() == 10.0
        rig.now += 60.0
        began = time.perf_counter()
        rig.controller.manual(RELEASE, "rollback", actor="bench", now=rig.now)
        seconds.append(time.perf_counter() - began)
        assert written() == 0.0
    return seconds


def gateway(server: ApiServer, workdir: Path, count: int) -> list[float]:
    from kubernetes import client  # noqa: PLC0415

    api = server.client()
    objects = client.CustomObjectsApi(api)
    objects.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, _route())

    def canary_weight() -> float:
        route = objects.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, ROUTE)
        refs = route["spec"]["rules"][0]["backendRefs"]
        return float(refs[1]["weight"]) / 100.0 if len(refs) > 1 else 0.0

    rig = make_rig(workdir)
    try:
        rig.controller.routers = Routers(
            ProxyTableRouter(rig.routing),
            {
                RoutingProvider.GATEWAY_API: GatewayApiRouter(api, NAMESPACE),
                RoutingProvider.NONE: NoopRouter(),
            },
        )
        rig.policies[RELEASE] = load_policy_text(GATEWAY_POLICY, "support.yaml")
        return _rollbacks(rig, count, canary_weight)
    finally:
        rig.close()
        objects.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, ROUTE)
        api.close()


def table(workdir: Path, count: int) -> list[float]:
    rig = make_rig(workdir)
    try:
        rig.policies[RELEASE] = load_policy_text(TABLE_POLICY, "support.yaml")

        def canary_weight() -> float:
            stored = rig.routing.read(RELEASE)
            return 0.0 if stored is None else stored.canary_weight

        return _rollbacks(rig, count, canary_weight)
    finally:
        rig.close()


def bare(server: ApiServer, count: int) -> list[float]:
    from kubernetes import client  # noqa: PLC0415

    api = server.client()
    objects = client.CustomObjectsApi(api)
    objects.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, _route())
    seconds: list[float] = []
    try:
        for index in range(count):
            began = time.perf_counter()
            route = objects.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, ROUTE)
            route["spec"]["rules"][0]["backendRefs"][0]["weight"] = 1 + index % 2
            objects.replace_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, ROUTE, route
            )
            seconds.append(time.perf_counter() - began)
    finally:
        objects.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, ROUTE)
        api.close()
    return seconds


def _summary(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50": statistics.median(ordered),
        "p90": ordered[int(0.9 * (len(ordered) - 1))],
        "max": ordered[-1],
    }


def _ms(value: float) -> str:
    return f"{value * 1000:.1f} ms"


def report(results: dict[str, Any], command: str) -> str:
    rows = (
        ("Gateway API router: the release's HTTPRoute rule", results["gatewayApi"]),
        ("reference: the proxies' routing table (SQLite)", results["table"]),
        ("floor: a bare GET and PUT of the route, no controller", results["bare"]),
    )
    reference = results["table"]["p50"]
    lines = [
        "# Rollback to the route written",
        "",
        f"Command: `{command}`; {results['machine']}; {results['rollbacks']} rollbacks each, "
        "timed from the `coalmine rollback` call to its return (decision logged, route "
        "written). The fake API server runs in its own process and validates every "
        "HTTPRoute write against the CRD's schema and CEL rules.",
        "",
        "| where the routes are | p50 | p90 | max | ratio p50 to reference |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, figures in rows:
        lines.append(
            f"| {name} | {_ms(figures['p50'])} | {_ms(figures['p90'])} | "
            f"{_ms(figures['max'])} | {figures['p50'] / reference:.2f} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rollbacks", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    args = parser.parse_args(argv)
    command = "python -m bench.gateway_rollback " + " ".join(argv or sys.argv[1:])
    server = ApiServer()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            work = Path(scratch)
            (work / "gateway").mkdir()
            (work / "table").mkdir()
            results: dict[str, Any] = {
                "rollbacks": args.rollbacks,
                "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
                "gatewayApi": _summary(gateway(server, work / "gateway", args.rollbacks)),
                "table": _summary(table(work / "table", args.rollbacks)),
                "bare": _summary(bare(server, args.rollbacks)),
            }
    finally:
        server.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    text = report(results, command.strip())
    (args.out / "gateway_rollback.md").write_text(text, encoding="utf-8")
    (args.out / "gateway_rollback.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
