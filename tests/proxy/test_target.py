"""The request path the proxy routes and sends: dot segments removed as RFC 3986 section
5.2.4 does, checked against the RFC's own algorithm over generated paths."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.target import BadPathError, TargetPath, remove_dot_segments, target_path


def rfc_remove_dot_segments(path: str) -> tuple[str, bool]:
    """RFC 3986 section 5.2.4, step by step as written; and whether a ``..`` found no
    segment left to remove (where the RFC stops at the root)."""
    rest, output, climbed = path, "", False
    while rest:
        if rest.startswith("../"):
            rest = rest[3:]
        elif rest.startswith(("./", "/./")):
            rest = rest[2:]
        elif rest == "/.":
            rest = "/"
        elif rest.startswith("/../") or rest == "/..":
            rest = "/" + rest[4:] if rest.startswith("/../") else "/"
            climbed = climbed or output == ""
            output = output[: max(output.rfind("/"), 0)]
        elif rest in (".", ".."):
            rest = ""
        else:
            start = 1 if rest.startswith("/") else 0
            end = rest.find("/", start)
            end = len(rest) if end < 0 else end
            output, rest = output + rest[:end], rest[end:]
    return output, climbed


def plain_dots(path: str) -> str:
    return path.replace("%2e", ".").replace("%2E", ".")


@pytest.mark.parametrize(
    ("raw", "resolved"),
    [
        ("/a/b/c/./../../g", "/a/g"),  # RFC 3986 section 5.2.4's own example
        ("/", "/"),
        ("/.", "/"),
        ("/./", "/"),
        ("/a/..", "/"),
        ("/a/../", "/"),
        ("/a/b/..", "/a/"),
        ("/a/./b", "/a/b"),
        ("/a//../b", "/a/b"),
        ("/a/%2e/b", "/a/b"),
        ("/a/%2E%2e/b", "/b"),
        ("/a/.../b", "/a/.../b"),
        ("/a/.b/..c", "/a/.b/..c"),
        ("/a/%2e%2e%2e", "/a/%2e%2e%2e"),
    ],
)
def test_dot_segments_are_removed(raw: str, resolved: str) -> None:
    assert remove_dot_segments(raw) == resolved


@pytest.mark.parametrize("raw", ["/..", "/../a", "/a/../..", "/a/%2e%2e/%2E./b", "/./.."])
def test_a_path_that_climbs_above_the_root_is_refused(raw: str) -> None:
    with pytest.raises(BadPathError, match="climbs above the root"):
        remove_dot_segments(raw)


def test_the_decoded_path_is_routed_and_the_raw_one_sent() -> None:
    assert target_path("/v1/caf%C3%A9/./x%2Fy") == TargetPath("/v1/caf%C3%A9/x%2Fy", "/v1/café/x/y")


@pytest.mark.parametrize("raw", ["/a/..%2f..%2fb", "/a/%2e%2e%2fb", "/a%2f..", "/a/.%2F"])
def test_a_dot_segment_behind_an_encoded_slash_is_refused(raw: str) -> None:
    with pytest.raises(BadPathError, match="encoded '/'"):
        target_path(raw)


_SEGMENTS = st.sampled_from(
    ["", ".", "..", "%2e", "%2E", "%2e%2e", ".%2E", "%2e.", "a", "b", "...", ".a", "a%2e", "%2f"]
)


@settings(derandomize=True, max_examples=500)
@given(segments=st.lists(_SEGMENTS, max_size=10))
def test_paths_resolve_as_rfc_3986_resolves_them(segments: list[str]) -> None:
    raw = "/" + "/".join(segments)
    expected, climbed = rfc_remove_dot_segments(plain_dots(raw))
    try:
        resolved = remove_dot_segments(raw)
    except BadPathError:
        assert climbed
        return
    assert not climbed
    assert plain_dots(resolved) == expected
    assert remove_dot_segments(resolved) == resolved  # nothing left to resolve


@settings(derandomize=True, max_examples=500)
@given(raw=st.text(max_size=40))
def test_any_path_is_resolved_or_refused(raw: str) -> None:
    try:
        path = target_path(raw)
    except BadPathError:
        return
    assert path.raw.startswith("/")
    for segment in path.decoded.split("/"):
        assert segment not in (".", "..")
    for segment in path.raw.split("/"):
        assert plain_dots(segment) not in (".", "..")
