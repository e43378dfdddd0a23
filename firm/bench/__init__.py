"""FIRM bench stage."""
