"""Probes: what each layer still knows about its input, and in which basis."""
__all__: list[str] = []
