"""Errors raised by polyviz.

Every error a user can trigger with bad input is a :class:`PolyvizError`; its message names the
argument at fault and what was expected, so that no bare framework traceback reaches the user.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "PolyvizError",
    "InputError",
    "LayerError",
    "TargetError",
    "CapabilityError",
    "BackendNotFoundError",
    "ModelError",
    "UntrustedFileError",
    "WeightsNotFoundError",
    "PolyvizWarning",
    "InputRangeWarning",
    "did_you_mean",
]


class PolyvizError(ValueError):
    """Base class of every polyviz error (a ``ValueError``, so generic handlers still catch it)."""


class InputError(PolyvizError):
    """``x`` (or another array argument) has the wrong shape, layout, dtype or values."""


class LayerError(PolyvizError):
    """A layer name is unknown, ambiguous, or the layer cannot serve the request."""


class TargetError(PolyvizError):
    """A target (class index, channel, neuron) is out of range or malformed."""


class CapabilityError(PolyvizError):
    """A backend was asked for a capability it does not declare."""


class BackendNotFoundError(PolyvizError):
    """No installed backend claims the model, or the requested backend is not installed."""


class ModelError(PolyvizError):
    """The model object is of a kind polyviz cannot drive (e.g. a subclassed Keras model)."""


class UntrustedFileError(ModelError):
    """A model file can run code when loaded (a full pickle, a ``torch.export`` archive) and the
    caller did not opt in with ``trust_pickle=True`` / ``--trust-pickle``. Nothing in it has run."""


class WeightsNotFoundError(PolyvizError, FileNotFoundError):
    """A weights file is absent and could not be downloaded."""


class PolyvizWarning(UserWarning):
    """Base class of every warning polyviz gives: the call went ahead, but the input looks wrong."""


class InputRangeWarning(PolyvizWarning):
    """``x`` has values far outside the input range that the declared preprocessing expects
    (an image in [0, 255] given to a model that expects [0, 1], or an already normalised one)."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return a ' Did you mean ...?' suffix listing the closest of ``choices`` (or '')."""
    close = difflib.get_close_matches(str(name), list(choices), n=n, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + ", ".join(repr(c) for c in close) + "?"
