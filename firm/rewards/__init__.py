"""FIRM rewards stage."""
