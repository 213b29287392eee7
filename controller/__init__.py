"""The control plane: Langfuse samples in, judged decisions out."""
