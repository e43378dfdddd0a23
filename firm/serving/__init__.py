"""FIRM serving stage."""
