"""Parity metrics, tolerances and gates."""
