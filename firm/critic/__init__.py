"""FIRM critic stage."""
