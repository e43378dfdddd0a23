"""FIRM models stage."""
