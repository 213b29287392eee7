"""Upstream URLs with a query or fragment are refused wherever an upstream URL is read: the
proxy appends each request's path and query to the URL, so with a fragment every request
would reach the upstream as the URL's own path (``GET /``), and a query would be doubled."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from coalmine.shared.routing_tables.store import BadRoutingTableError, parse_table
from coalmine.shared.routing_tables.table import initial_table
from policies.errors import PolicyError
from proxy.settings import ProxySettings
from tests.proxy.proxy_support import make_policy

REFUSED = "must not have a query ('?') or fragment ('#')"
BAD_URLS = [
    "http://stable.test/v1?key=1",
    "http://stable.test/?",
    "http://stable.test/#top",
    "http://stable.test#",
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("COALMINE_", "LANGFUSE_")):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("url", BAD_URLS)
def test_policy_upstreams_refuse_it_naming_the_field(url: str) -> None:
    with pytest.raises(PolicyError) as stable:
        make_policy(stable=url, canary="http://canary.test")
    assert f"target.upstreams.stable: {REFUSED}" in str(stable.value)
    with pytest.raises(PolicyError) as canary:
        make_policy(stable="http://stable.test", canary=url)
    assert f"target.upstreams.canary: {REFUSED}" in str(canary.value)
    shadow = f'shadow: {{upstream: "{url}", percent: 5}}'
    with pytest.raises(PolicyError) as staging:
        make_policy(stable="http://stable.test", canary="http://canary.test", shadow=shadow)
    assert f"shadow.upstream: {REFUSED}" in str(staging.value)


@pytest.mark.parametrize("url", BAD_URLS)
def test_a_stored_routing_table_with_it_is_refused_naming_the_field(url: str) -> None:
    policy = make_policy(
        stable="http://stable.test",
        canary="http://canary.test",
        shadow='shadow: {upstream: "http://staging.test", percent: 5}',
    )
    table = initial_table(policy, version=1)
    for arm in ("baseline", "canary", "shadow"):
        route = getattr(table, arm)
        bad = table.model_copy(update={arm: route.model_copy(update={"upstream": url})})
        with pytest.raises(BadRoutingTableError) as raised:
            parse_table(bad.model_dump_json(by_alias=True), "support", 1, where="state.db")
        assert f"state.db: routing table of 'support' v1: {arm}.upstream: " in str(raised.value)
        assert REFUSED in str(raised.value)


@pytest.mark.parametrize("url", BAD_URLS)
def test_the_app_url_setting_refuses_it(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError) as given:
        ProxySettings(app_url=url)
    monkeypatch.setenv("COALMINE_APP_URL", url)
    with pytest.raises(ValidationError) as from_environment:
        ProxySettings()
    for raised in (given.value, from_environment.value):
        [error] = raised.errors()
        assert error["loc"] == ("app_url",)
        assert REFUSED in error["msg"]
