"""Settings the proxy and the controller share: how to reach Langfuse (under Langfuse's
own environment variable names) and the admin token."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings


class LangfuseConnection(BaseSettings):
    """Langfuse project keys and server; mixed into each process's settings."""

    langfuse_public_key: str | None = Field(
        default=None, validation_alias=AliasChoices("LANGFUSE_PUBLIC_KEY", "langfuse_public_key")
    )
    """Langfuse project public key (``LANGFUSE_PUBLIC_KEY``)."""

    langfuse_secret_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("LANGFUSE_SECRET_KEY", "langfuse_secret_key")
    )
    """Langfuse project secret key (``LANGFUSE_SECRET_KEY``); never logged."""

    langfuse_base_url: str = Field(
        default="https://cloud.langfuse.com",
        validation_alias=AliasChoices("LANGFUSE_BASE_URL", "LANGFUSE_HOST", "langfuse_base_url"),
    )
    """Langfuse server (``LANGFUSE_BASE_URL``, falling back to ``LANGFUSE_HOST``)."""

    def langfuse_keys(self) -> tuple[str, str] | None:
        """(public, secret) when both are set."""
        if self.langfuse_public_key is None or self.langfuse_secret_key is None:
            return None
        return self.langfuse_public_key, self.langfuse_secret_key.get_secret_value()


class AdminToken(BaseSettings):
    """The token that guards manual actions; mixed into each process's settings."""

    admin_token: SecretStr | None = None
    """The admin token (``COALMINE_ADMIN_TOKEN``)."""

    admin_token_file: Path | None = None
    """File holding the admin token (a mounted Secret); read once at start."""

    def token(self) -> str | None:
        """The admin token from the setting or its file, None when neither is set."""
        if self.admin_token is not None:
            return self.admin_token.get_secret_value() or None
        if self.admin_token_file is not None:
            return self.admin_token_file.read_text(encoding="utf-8").strip() or None
        return None
