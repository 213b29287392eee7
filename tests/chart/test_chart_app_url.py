"""The chart tells the sidecar where the application listens: prompt-only releases (no
``target.upstreams``) are routed to the app container's port on localhost."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from proxy.settings import ProxySettings


@pytest.mark.parametrize("port", [None, 3000])
def test_the_sidecar_sends_prompt_only_releases_to_the_app_container(
    render: Callable[..., Any], port: int | None
) -> None:
    rendered = render({} if port is None else {"app": {"port": port}})
    app_port = rendered.container("app")["ports"][0]["containerPort"]
    assert app_port == (8000 if port is None else port)
    value = rendered.env("coalmine")["COALMINE_APP_URL"]["value"]
    assert value == f"http://127.0.0.1:{app_port}"
    assert ProxySettings(app_url=value).app_url == value
