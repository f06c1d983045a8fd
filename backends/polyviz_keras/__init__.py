"""Keras 3 (TensorFlow backend) backend for polyviz.

Importing this package does not import Keras or TensorFlow: they are loaded lazily, inside the
backend's methods, once a Keras model is handed to it.
"""

from polyviz_keras._backend import KerasBackend

__all__ = ["KerasBackend"]
