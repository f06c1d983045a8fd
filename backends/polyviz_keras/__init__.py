"""Keras backend for polyviz (placeholder: being written)."""
