"""A local Langfuse-compatible server: the public API subset coalmine uses.

Held to the Langfuse server's OpenAPI spec and driven by the official `langfuse` SDK in
the tests. Start it with `coalmine langfuse-emulator`.
"""
