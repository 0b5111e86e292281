"""Circuits: composition, copying and behavioural head scores, induction-head detection."""
