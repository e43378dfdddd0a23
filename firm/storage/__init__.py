"""FIRM storage stage."""
