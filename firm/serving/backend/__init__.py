"""Python-backend model code run inside Triton (imported by the repository's model.py shims)."""
