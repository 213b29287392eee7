"""The floor both planes stand on: routing tables and where they live, the names the proxy,
the app and the controller agree on, the Langfuse connection settings, and the Kubernetes
client of cluster mode. It imports neither plane."""
