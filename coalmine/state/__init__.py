"""State shared by the control plane and the data plane: routing tables, in one store."""
