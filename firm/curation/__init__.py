"""FIRM curation stage."""
