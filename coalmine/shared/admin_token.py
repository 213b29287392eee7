"""How strong the admin token must be: one rule for every server that takes it (the
controller's admin API, the proxy's forced arms), checked when it starts.

The token is a bearer secret compared in constant time, so its strength is its length
and randomness: at least 32 characters, as many as ``openssl rand -hex 16`` prints (128
random bits), and at least 8 different characters among them, which refuses a padded
placeholder (``aaaa...``, ``00000000...1``) without refusing any random token in
practice.
"""

from __future__ import annotations

from typing import Final

from coalmine.shared.settings import AdminToken

__all__ = ["MIN_DISTINCT_CHARS", "MIN_TOKEN_CHARS", "TOKEN_RULE", "weak_token"]

MIN_TOKEN_CHARS: Final = 32
MIN_DISTINCT_CHARS: Final = 8
TOKEN_RULE: Final = (
    f"at least {MIN_TOKEN_CHARS} characters, at least {MIN_DISTINCT_CHARS} of them different "
    "(make one with `openssl rand -hex 16`)"
)


def weak_token(settings: AdminToken, token: str) -> str | None:
    """Why ``token`` (read from ``settings``) is too weak to guard the admin API, in one
    line that names where it was set, or None when it is strong enough. The line never
    repeats the token."""
    length = len(token)
    distinct = len(set(token))
    if length >= MIN_TOKEN_CHARS and distinct >= MIN_DISTINCT_CHARS:
        return None
    source = (
        "COALMINE_ADMIN_TOKEN"
        if settings.admin_token is not None
        else f"COALMINE_ADMIN_TOKEN_FILE {settings.admin_token_file}"
    )
    return (
        f"{source}: the admin token is too weak ({length} characters, {distinct} different); "
        f"it needs {TOKEN_RULE}"
    )
