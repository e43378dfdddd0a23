"""FIRM: trustworthy critics (reward models) and RL for faithful image editing and generation."""

__version__ = "0.1.0"
