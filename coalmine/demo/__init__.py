"""`coalmine demo`: a release end to end on loopback, with no account and no cluster."""
