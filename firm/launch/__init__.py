"""FIRM launch stage."""
