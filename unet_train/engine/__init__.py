"""Training and evaluation loops and their helpers."""
