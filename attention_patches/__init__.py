"""Attention patches for FLUX (plain torch; applied to models through ModelPatcher patch points)."""
