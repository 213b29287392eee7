"""The sample support agent: a FastAPI app with an OpenAI-compatible chat endpoint that
answers through a deterministic mock model and traces with the coalmine helper.

Run it with ``python -m coalmine.demo.agent --port 8000 --name stable``.
"""

from coalmine.demo.agent.app import AgentSettings, create_app

__all__ = ["AgentSettings", "create_app"]
