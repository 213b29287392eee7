"""The releases a proxy routes follow the policy set while it runs: a release added, one
removed, one edited (its routing fields at once, its table kept while the new policy
allows it), a policy that clashes kept out, pins kept; and the prompt-only release, whose
arms go to the proxy's application."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest

from coalmine.shared.routing_tables.store import SqliteRoutingStore
from coalmine.shared.routing_tables.table import (
    ArmRoute,
    RoutingTable,
    check_upstreams,
    initial_table,
)
from policies import Policy
from policies.domain import Arm
from policies.loader import load_policy_text
from proxy.plan import Forward, PlanSettings, Refusal, RequestHead, plan_request
from proxy.routes import PolicyFeed, PolicyRefresher, Refused, Releases, RoutingRefresher
from proxy.server import build_app
from proxy.settings import ProxySettings
from tests.proxy.proxy_support import make_policy

STABLE = "http://stable.test"
CANARY = "http://canary.test"
OTHER = "http://other.test"
APP = "http://app.test:8000"
TOKEN = b"qa-token-1234567890-abcdefghijklmn"

PROMPT_ONLY = """\
apiVersion: coalmine/v1
kind: Release
name: {name}
target:
  prompt: {{name: {name}-prompt, stableLabel: production, canaryLabel: candidate}}
routing:
  pathPrefix: {prefix}
steps: [{{weight: 5}}, {{weight: 50}}]
analysis:
  metrics: [{{name: errors, source: error_rate, tolerance: 0.01}}]
"""


class Fixed:
    """Chance with one fixed draw and fixed ids."""

    def __init__(self, draw: float = 50.0) -> None:
        self.draw = draw

    def percent(self) -> float:
        return self.draw

    def new_id(self) -> str:
        return "5f1d4c0e9a8b7c6d5e4f3a2b1c0d9e8f"

    def new_trace_id(self) -> str:
        return "0123456789abcdef0123456789abcdef"

    def new_span_id(self) -> str:
        return "fedcba9876543210"


def prompt_only(name: str = "summary", prefix: str = "/summarize") -> Policy:
    return load_policy_text(PROMPT_ONLY.format(name=name, prefix=prefix), f"{name}.yaml")


def agent(
    name: str = "support",
    prefix: str = "/",
    *,
    stable: str = STABLE,
    canary: str = CANARY,
    routing: str = "",
    shadow: str = "",
) -> Policy:
    return make_policy(
        name=name,
        stable=stable,
        canary=canary,
        routing=f"  pathPrefix: {prefix}\n{routing}",
        shadow=shadow,
    )


def by_name(*policies: Policy) -> dict[str, Policy]:
    return {policy.name: policy for policy in policies}


def route(
    releases: Releases, path: str, *headers: tuple[str, str], draw: float = 50.0
) -> Forward | Refusal:
    head = RequestHead(
        method="POST",
        path=path,
        target=path,
        scheme="http",
        client="127.0.0.1",
        headers=[(b"host", b"proxy.test")]
        + [(name.encode(), value.encode()) for name, value in headers],
    )
    return plan_request(head, releases, PlanSettings(admin_token=TOKEN), Fixed(draw))


def forwarded(releases: Releases, path: str, *headers: tuple[str, str]) -> Forward:
    plan = route(releases, path, *headers)
    assert isinstance(plan, Forward), plan
    return plan


def initial(table: RoutingTable, policy: Policy) -> bool:
    """Whether ``table`` is the initial table of ``policy`` (whenever it was made)."""
    return table.model_dump(exclude={"updated_at"}) == initial_table(policy).model_dump(
        exclude={"updated_at"}
    )


def stored(policy: Policy, weight: float, version: int = 3) -> RoutingTable:
    return initial_table(policy, weight, version=version).model_copy(
        update={"reason": "controller"}
    )


# ----------------------------------------------------------------------- added, removed


def test_a_release_added_is_routed_from_its_stored_table() -> None:
    releases = Releases([agent()], app_url=APP)
    billing = agent("billing", "/billing")
    assert forwarded(releases, "/billing/x").release == "support"

    update = releases.update(by_name(agent(), billing), {"billing": stored(billing, 100.0)})

    assert (update.added, update.removed, update.edited) == (("billing",), (), ())
    plan = forwarded(releases, "/billing/x")
    assert (plan.release, plan.arm, plan.upstream) == ("billing", Arm.CANARY, CANARY)
    assert releases.by_name["billing"].table.version == 3


def test_a_release_added_without_a_stored_table_starts_from_its_initial_table() -> None:
    releases = Releases([agent()], app_url=APP)
    billing = agent("billing", "/billing")
    releases.update(by_name(agent(), billing))
    assert initial(releases.by_name["billing"].table, billing)
    assert forwarded(releases, "/billing").arm is Arm.BASELINE


def test_a_stored_table_the_policy_does_not_allow_is_not_taken_for_an_added_release() -> None:
    releases = Releases([agent()], app_url=APP)
    billing = agent("billing", "/billing")
    elsewhere = stored(agent("billing", "/billing", canary=OTHER), 100.0)
    releases.update(by_name(agent(), billing), {"billing": elsewhere})
    assert initial(releases.by_name["billing"].table, billing)


def test_a_release_removed_is_no_longer_routed() -> None:
    releases = Releases([agent(), agent("billing", "/billing")], app_url=APP)
    update = releases.update(by_name(agent("billing", "/billing")))
    assert update.removed == ("support",)
    refused = route(releases, "/v1/chat")
    assert isinstance(refused, Refusal)
    assert (refused.status, refused.code) == (404, "no_release")
    assert forwarded(releases, "/billing").release == "billing"


def test_the_same_set_again_changes_nothing() -> None:
    releases = Releases([agent()], app_url=APP)
    before = releases.by_name["support"]
    update = releases.update(by_name(agent()))
    assert not update.changed and update.refused == ()
    assert releases.by_name["support"] is before


# ----------------------------------------------------------------------------- edited


def test_an_edit_routes_by_the_new_routing_fields_at_once_and_keeps_the_table() -> None:
    releases = Releases([agent()], app_url=APP)
    assert releases.apply(stored(agent(), 100.0))
    edited = agent(
        prefix="/v2",
        routing="  stickiness: {cookie: session}\n  readTimeout: 20s\n  connectTimeout: 2s",
    )

    update = releases.update(by_name(edited))

    assert (update.edited, update.reset) == (("support",), ())
    assert isinstance(route(releases, "/v1/chat"), Refusal)
    plan = forwarded(releases, "/v2/chat")
    assert (plan.arm, plan.upstream) == (Arm.CANARY, CANARY)  # the controller's weight kept
    assert plan.set_cookie is not None and plan.set_cookie.startswith(b"session=")
    assert plan.timeout == {"connect": 2.0, "read": 20.0, "write": 20.0, "pool": 2.0}
    assert releases.by_name["support"].table.version == 3


def test_an_edit_takes_the_new_shadow_limits_and_keeps_the_share_mirrored() -> None:
    shadow = 'shadow: {upstream: "http://staging.test", percent: 10, maxBodyBytes: 100}'
    releases = Releases([agent(shadow=shadow)], app_url=APP)
    table = stored(agent(shadow=shadow), 10.0)
    assert table.shadow is not None
    releases.apply(
        table.model_copy(update={"shadow": table.shadow.model_copy(update={"percent": 3.0})})
    )
    limits = (
        'shadow: {upstream: "http://staging.test", percent: 10, maxBodyBytes: 500, '
        "maxInFlight: 2, methods: [POST, PUT]}"
    )

    releases.update(by_name(agent(shadow=limits)))

    mirrored = releases.by_name["support"].table.shadow
    assert mirrored is not None
    assert (mirrored.percent, mirrored.max_body_bytes, mirrored.max_in_flight) == (3.0, 500, 2)
    assert mirrored.methods == ("POST", "PUT")


def test_an_edit_that_the_table_no_longer_fits_goes_back_to_the_initial_table() -> None:
    releases = Releases([agent()], app_url=APP)
    releases.apply(stored(agent(), 100.0))
    moved = agent(canary=OTHER)

    update = releases.update(by_name(moved))

    [(name, why)] = update.reset
    assert name == "support" and f"canary upstream '{CANARY}'" in why
    assert initial(releases.by_name["support"].table, moved)
    assert forwarded(releases, "/x").upstream == STABLE


def test_an_edit_of_a_release_the_controller_never_wrote_for_takes_its_new_initial_table() -> None:
    releases = Releases([agent()], app_url=APP)
    shadow = 'shadow: {upstream: "http://staging.test", percent: 10}'
    update = releases.update(by_name(agent(shadow=shadow)))
    assert update.edited == ("support",) and update.reset == ()
    assert initial(releases.by_name["support"].table, agent(shadow=shadow))


def test_a_release_that_becomes_prompt_only_goes_to_the_app_from_its_initial_table() -> None:
    releases = Releases([agent()], app_url=APP)
    releases.apply(stored(agent(), 100.0))
    update = releases.update(by_name(prompt_only("support", "/")))
    assert [name for name, _ in update.reset] == ["support"]
    plan = forwarded(releases, "/x")
    assert (plan.upstream, plan.prompt_label) == (APP, "production")


def test_a_renamed_release_is_one_removed_and_one_added() -> None:
    releases = Releases([agent()], app_url=APP)
    update = releases.update(by_name(agent("support-two")))
    assert (update.added, update.removed) == (("support-two",), ("support",))
    assert forwarded(releases, "/x").release == "support-two"


# ----------------------------------------------------------------------------- clashes


def test_a_policy_that_clashes_is_kept_out_and_the_others_go_on() -> None:
    releases = Releases([agent()], app_url=APP)
    clashing = agent("intruder", "/")
    billing = agent("billing", "/billing")

    update = releases.update({"support": agent(), "intruder": clashing, "billing": billing})

    assert update.refused == (
        Refused("intruder", "releases 'support' and 'intruder' both claim path prefix '/'"),
    )
    assert update.added == ("billing",)
    assert sorted(releases.by_name) == ["billing", "support"]
    assert forwarded(releases, "/x").release == "support"


def test_of_two_that_clash_the_one_in_force_stays_whatever_the_order() -> None:
    releases = Releases([agent()], app_url=APP)
    update = releases.update({"intruder": agent("intruder", "/"), "support": agent()})
    assert [refused.release for refused in update.refused] == ["intruder"]
    assert not update.changed
    assert forwarded(releases, "/x").release == "support"


def test_two_releases_of_one_prompt_are_both_routed() -> None:
    releases = Releases([agent()], app_url=APP)
    same_prompt = agent("billing", "/billing")  # both release prompt support-agent
    update = releases.update(by_name(agent(), same_prompt))
    assert update.refused == () and update.added == ("billing",)


def test_start_up_still_refuses_a_set_that_clashes() -> None:
    with pytest.raises(ValueError, match="both claim path prefix '/'"):
        Releases([agent(), agent("other")], app_url=APP)


# ----------------------------------------------------------------------------- pins


def test_a_pinned_release_keeps_its_pin_through_edits_and_removals() -> None:
    releases = Releases([agent()], {"support": 100.0}, app_url=APP)
    assert not releases.apply(stored(agent(), 0.0, version=9))

    releases.update(by_name(agent(prefix="/v2")))
    release = releases.by_name["support"]
    assert release.pinned and release.table.canary_weight == 100.0
    assert forwarded(releases, "/v2").arm is Arm.CANARY

    releases.update({})
    releases.update(by_name(agent()), {"support": stored(agent(), 0.0, version=9)})
    release = releases.by_name["support"]
    assert release.pinned and (release.table.canary_weight, release.table.version) == (100.0, 0)


def test_a_pin_must_name_a_release_at_start() -> None:
    with pytest.raises(ValueError, match="--weight names no release"):
        Releases([agent()], {"other": 5.0}, app_url=APP)


# ----------------------------------------------------------------------------- prompt-only


def test_a_prompt_only_release_sends_both_arms_to_the_app_with_their_labels() -> None:
    policy = prompt_only()
    table = initial_table(policy)
    assert table.baseline == ArmRoute(upstream=None, prompt_label="production")
    assert table.canary == ArmRoute(upstream=None, prompt_label="candidate")
    releases = Releases([policy], app_url=APP)
    for force, label in (("baseline", "production"), ("canary", "candidate")):
        plan = forwarded(
            releases,
            "/summarize",
            ("x-coalmine-force-arm", force),
            ("x-coalmine-admin-token", TOKEN.decode()),
        )
        assert (plan.upstream, plan.prompt_label) == (APP, label)
        headers = dict(plan.headers)
        assert headers[b"x-coalmine-prompt-label"] == label.encode()
        assert headers[b"x-coalmine-arm"] == force.encode()
        assert headers[b"x-coalmine-release"] == b"summary"
        assert plan.url == APP + "/summarize"


def test_the_app_is_allowed_only_for_a_policy_without_upstreams() -> None:
    to_app = initial_table(prompt_only("support", "/"), 50.0, version=1)
    check_upstreams(to_app, prompt_only("support", "/"))
    with pytest.raises(ValueError, match="proxy's application, but the release's policy names"):
        check_upstreams(to_app, agent())
    with pytest.raises(ValueError, match="is not named by the release's policy"):
        check_upstreams(stored(agent(), 5.0), prompt_only("support", "/"))


def test_tables_written_before_the_app_url_still_load() -> None:
    old = (
        '{"release": "support", "version": 4, "canaryWeight": 25.0,'
        ' "baseline": {"upstream": "http://stable.test", "promptLabel": "production"},'
        ' "canary": {"upstream": "http://canary.test"},'
        ' "updatedAt": "2026-11-22T10:00:00Z", "reason": "controller"}'
    )
    table = RoutingTable.model_validate_json(old)
    assert (table.baseline.upstream, table.canary.upstream) == (STABLE, CANARY)
    to_app = RoutingTable.model_validate_json(
        initial_table(prompt_only()).model_dump_json(by_alias=True)
    )
    assert (to_app.baseline.upstream, to_app.canary.upstream) == (None, None)


# ----------------------------------------------------------------------------- refreshers


def test_a_release_replaced_by_an_edit_reads_its_stored_table_again(tmp_path: Path) -> None:
    store = SqliteRoutingStore(tmp_path / "state.db")
    try:
        store.write(initial_table(agent(), 5.0), None)
        releases = Releases([agent()], app_url=APP)
        refresher = RoutingRefresher(releases, store, interval=1.0)
        assert [t.version for t in refresher.refresh()] == [1]
        assert refresher.refresh() == []
        moved = agent(canary=OTHER)  # the stored table no longer fits: initial table
        releases.update(by_name(moved))
        current = store.read("support")
        assert current is not None
        store.write(current.model_copy(update={"canary": ArmRoute(upstream=OTHER)}), 1)
        assert [t.canary.upstream for t in refresher.refresh()] == [OTHER]
    finally:
        store.close()


def test_the_policy_refresher_applies_a_changed_set_and_counts_it(tmp_path: Path) -> None:
    store = SqliteRoutingStore(tmp_path / "state.db")
    billing = agent("billing", "/billing")
    store.write(initial_table(billing, 100.0), None)
    current: list[Mapping[str, Policy]] = [by_name(agent())]
    app = build_app(
        ProxySettings(spans=False, metrics_listen=None, app_url=APP),
        [agent()],
        store=store,
        policy_feed=PolicyFeed(lambda: current[0]),
    )
    [refresher, _] = app.refreshers
    assert isinstance(refresher, PolicyRefresher)

    def metric(name: str, **labels: str) -> float:
        value = app.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    async def scenario() -> None:
        assert await refresher.refresh_once() is None  # nothing changed
        current[0] = by_name(agent(), billing)
        update = await refresher.refresh_once()
        assert update is not None and update.added == ("billing",)
        assert metric("coalmine_proxy_routed_releases") == 2
        assert metric("coalmine_proxy_canary_weight_ratio", release="billing") == 1.0
        assert metric("coalmine_proxy_policy_sets_total", outcome="applied") == 1
        current[0] = {"billing": billing, "intruder": agent("intruder", "/billing")}
        update = await refresher.refresh_once()
        assert update is not None and update.removed == ("support",)
        assert [refused.release for refused in update.refused] == ["intruder"]
        assert metric("coalmine_proxy_policy_sets_total", outcome="refused") == 1
        assert metric("coalmine_proxy_routed_releases") == 1
        assert (
            app.metrics.registry.get_sample_value(
                "coalmine_proxy_canary_weight_ratio", {"release": "support"}
            )
            is None
        )
        assert await refresher.refresh_once() is None  # the same set: not counted again

        def broken() -> Mapping[str, Policy]:
            raise OSError("policy directory unreadable")

        refresher.source = broken
        assert await refresher.refresh_once() is None
        assert metric("coalmine_proxy_policy_sets_total", outcome="failed") == 1
        assert sorted(app.releases.by_name) == ["billing"]

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_a_policy_the_source_keeps_out_is_reported_once_as_refused() -> None:
    releases = Releases([agent()], app_url=APP)
    kept_out: dict[str, str] = {}
    refresher = PolicyRefresher(
        releases, lambda: by_name(agent()), interval=1.0, kept_out=lambda: kept_out
    )

    async def scenario() -> None:
        assert await refresher.refresh_once() is None
        kept_out["intruder"] = "a.yaml and b.yaml: releases 'support' and 'intruder' clash"
        update = await refresher.refresh_once()
        assert update is not None and not update.changed
        assert update.refused == (Refused("intruder", kept_out["intruder"]),)
        assert await refresher.refresh_once() is None  # still kept out: reported once
        kept_out.clear()
        assert await refresher.refresh_once() is None

    asyncio.run(scenario())
    assert sorted(releases.by_name) == ["support"]
