"""PyTorch backend for polyviz (placeholder: being written)."""
