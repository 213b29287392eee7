"""Cluster mode of the controller: its state in ConfigMaps, a Lease that elects the one
replica that acts, and Kubernetes Events for its decisions and actions."""
