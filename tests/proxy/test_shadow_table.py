"""What the proxy mirrors comes from the routing table in the store, not from the policy: a
release whose policy names a staging upstream is mirrored only while its table says so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from coalmine.shared.routing_tables.store import SqliteRoutingStore
from coalmine.shared.routing_tables.table import RoutingTable, initial_table
from policies import Policy
from tests.proxy.proxy_support import (
    RunningProxy,
    UpstreamServed,
    make_policy,
    start_proxy,
    wait_until,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteRoutingStore]:
    store = SqliteRoutingStore(tmp_path / "state.db")
    yield store
    store.close()


def _policy(stable: UpstreamServed, staging: UpstreamServed) -> Policy:
    return make_policy(
        stable=stable[1].base_url,
        canary=stable[1].base_url,
        shadow=f'shadow: {{upstream: "{staging[1].base_url}", percent: 100}}',
    )


def _publish(store: SqliteRoutingStore, table: RoutingTable, proxy: RunningProxy | None) -> int:
    current = store.read(table.release)
    stored = store.write(table, None if current is None else current.version)
    if proxy is not None:
        proxy.wait_for(
            float(stored.version), "coalmine_proxy_routing_table_version", release="support"
        )
    return stored.version


def test_a_table_without_shadow_sends_no_copy_although_the_policy_names_staging(
    stable: UpstreamServed,
    staging: UpstreamServed,
    running: list[RunningProxy],
    store: SqliteRoutingStore,
    tmp_path: Path,
) -> None:
    policy = _policy(stable, staging)
    mirrored = initial_table(policy)
    _publish(store, mirrored, None)
    proxy = start_proxy([policy], running, state=tmp_path / "state.db")
    proxy.wait_for(1.0, "coalmine_proxy_routing_table_version", release="support")
    with httpx.Client(base_url=proxy.url) as client:
        assert client.post("/v1/chat", content=b"mirrored").status_code == 200
        wait_until(lambda: proxy.shadow("sent") == 1.0, what="the copy of the mirrored table")
        # the table of a release that has ended: same policy, no shadow route
        _publish(store, mirrored.model_copy(update={"shadow": None}), proxy)
        statuses = [client.post("/v1/chat", content=b"ended").status_code for _ in range(20)]
    assert statuses == [200] * 20
    # a copy is handed to the mirror before the primary's response goes out
    assert proxy.metric("coalmine_proxy_shadow_in_flight_requests") == 0.0
    assert (proxy.shadow("sent"), proxy.shadow("failed")) == (1.0, 0.0)
    assert [seen.body for seen in staging[0].seen] == [b"mirrored"]
    assert len(stable[0].seen) == 21
