"""FIRM cli stage."""
