"""The emulator's FastAPI app: routes, auth, errors, rate limits and faults."""

from __future__ import annotations

from fastapi import FastAPI

from coalmine.emulator import errors, metrics, observations, otel, prompts, scores
from coalmine.emulator.settings import EmulatorSettings
from coalmine.emulator.store import Store


def create_app(settings: EmulatorSettings | None = None, store: Store | None = None) -> FastAPI:
    """An emulator app. Its settings and store are on ``app.state``."""
    settings = settings or EmulatorSettings()
    app = FastAPI(title="coalmine Langfuse emulator", docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.store = store or Store(settings.db, max_bytes=settings.max_bytes)
    errors.install(app)

    @app.get("/api/public/health")
    def health() -> dict[str, str]:
        return {"status": "OK", "version": "4.16.0"}

    for module in (prompts, scores, otel, observations, metrics):
        app.include_router(module.router)
    return app
