"""The data plane: the routing proxy."""
