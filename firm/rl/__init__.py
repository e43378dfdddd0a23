"""FIRM rl stage."""
