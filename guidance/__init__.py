"""Backward guidance and latent inversion for LSReGen (plain torch)."""
