"""Geometry: how the residual stream moves from layer to layer."""
__all__: list[str] = []
