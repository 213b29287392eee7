"""Settings of the proxy, from the environment (``COALMINE_*``, Langfuse's own names for
its keys) and then from command-line flags, which win."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ProxySettings(BaseSettings):
    """How one proxy process listens, where it reads routing tables, where spans go."""

    model_config = SettingsConfigDict(
        env_prefix="COALMINE_", extra="forbid", frozen=True, populate_by_name=True
    )

    listen: str = "127.0.0.1:8080"
    """HOST:PORT the proxy serves the application's traffic on."""

    metrics_listen: str | None = "127.0.0.1:9464"
    """HOST:PORT of the Prometheus metrics endpoint; None: no endpoint."""

    state: Path | None = None
    """SQLite state file the controller writes routing tables to; None: no store, every
    release at canary weight 0 unless pinned."""

    admin_token: SecretStr | None = None
    """Token that allows ``x-coalmine-force-arm`` (sent as ``x-coalmine-admin-token``)."""

    admin_token_file: Path | None = None
    """File holding the admin token (a mounted Secret); read once at start."""

    spans: bool = True
    """Report every request to Langfuse as the root span of its trace."""

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

    max_header_bytes: int = Field(default=65536, ge=1024)
    """Requests whose headers add up to more are refused with 431."""

    routing_poll_interval: float = Field(default=0.25, gt=0, le=1)
    """Seconds between two looks at the state store for new routing tables."""

    graceful_shutdown_seconds: float = Field(default=30.0, ge=0)
    """On SIGTERM, how long requests in flight may take to finish."""

    def token(self) -> str | None:
        """The admin token from the setting or its file, None when neither is set."""
        if self.admin_token is not None:
            return self.admin_token.get_secret_value() or None
        if self.admin_token_file is not None:
            return self.admin_token_file.read_text(encoding="utf-8").strip() or None
        return None
