"""What a dataset run computes, as plain picklable data: the model (how to load it), the methods
and metrics with their options, the targets, the seed and the shard size. A worker process (a Ray
actor) receives this and loads the model once; the manifest records it."""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from polyviz.errors import InputError, did_you_mean

__all__ = ["ModelSpec", "RunConfig", "parse_named", "shard_seed", "metric_kwargs", "TARGETS"]

TARGETS = ("pred", "label")


@dataclass
class ModelSpec:
    """How to get the model in any process: a name or file for :func:`polyviz.loading.load_model`
    (``name``, ``backend``, ``weights``, ``size``, ``seed``, ``arch``, ``trust_pickle``), or a model
    object / a zero-argument factory returning one (``obj``; with ``size`` and ``preprocess``)."""

    name: str | None = None
    backend: str | None = None
    weights: str | None = None
    size: int | None = None
    seed: int | None = None
    arch: str | None = None
    trust_pickle: bool = False
    preprocess: str | None = None
    obj: Any = None

    def load(self) -> tuple[Any, tuple[int, int], Any]:
        """(model, input size (H, W), preprocess) in this process."""
        from polyviz.loading import load_model

        if self.obj is not None:
            model = self.obj() if callable(self.obj) and not hasattr(self.obj, "forward") and not hasattr(
                self.obj, "predict") else self.obj
            if hasattr(model, "model") and hasattr(model, "size") and hasattr(model, "backend"):  # a LoadedModel
                return model.model, tuple(model.size), self.preprocess or model.preprocess
            if self.size is None:
                raise InputError("size: give the input size in pixels for a model object (size=224)")
            return model, (int(self.size), int(self.size)), self.preprocess
        lm = load_model(self.name, self.backend, self.weights, size=self.size, seed=self.seed, arch=self.arch,
                        trust_pickle=self.trust_pickle)
        return lm.model, tuple(lm.size or (224, 224)), self.preprocess or lm.preprocess

    def describe(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "obj"}
        if self.obj is not None:
            d["object"] = f"{type(self.obj).__module__}.{type(self.obj).__qualname__}"
        return d


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_named(spec: str | tuple[str, dict[str, Any]] | dict[str, Any], what: str) -> tuple[str, dict[str, Any]]:
    """``'integrated_gradients'``, ``'integrated_gradients:n_steps=50,baseline=0'`` (values read
    as JSON, else strings), ``(name, {options})`` or ``{'name': ..., **options}`` -> (name, options)."""
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], dict):
        return spec[0], dict(spec[1])
    if isinstance(spec, dict) and isinstance(spec.get("name"), str):
        rest = dict(spec)
        return rest.pop("name"), rest
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"{what}: expected a name, 'name:option=value,...' or (name, options), got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    options = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise InputError(f"{what}: expected option=value after '{name}:', got {part!r}")
        options[key.strip()] = _value(value.strip())
    return name.strip(), options


#: Arguments a metric can take from the run, by name (others come from the metric's options).
RUN_ARGUMENTS = ("model", "x", "target", "masks", "method", "method_options", "attribution", "layer", "seed",
                 "batch_size", "progress", "layout")


def metric_kwargs(fn: Any, available: dict[str, Any], options: dict[str, Any]) -> dict[str, Any] | None:
    """The keyword arguments to call metric ``fn`` with: the run's ``available`` values its signature
    names, plus ``options``. None when it needs a value the run lacks (masks without masks)."""
    params = inspect.signature(fn).parameters
    kwargs = {}
    for name, p in params.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name in options:
            continue
        if name in available and available[name] is not None:
            kwargs[name] = available[name]
        elif p.default is inspect.Parameter.empty:
            return None
    return {**kwargs, **options}


def check_metric_options(fn: Any, name: str, options: dict[str, Any]) -> None:
    params = {k: p for k, p in inspect.signature(fn).parameters.items()
              if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    for key in options:  # a metric's **options go to its own method call; the run gives the method
        if key not in params or key in RUN_ARGUMENTS:
            known = [k for k in params if k not in RUN_ARGUMENTS]
            raise InputError(f"metric {name!r}: unknown option {key!r}.{did_you_mean(key, known)} "
                             f"Its options: {', '.join(known) or 'none'}")


@dataclass
class RunConfig:
    """Everything that decides a run's numbers (see :func:`fingerprint`)."""

    model: ModelSpec
    methods: list[tuple[str, dict[str, Any]]]
    metrics: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    target: str = "pred"
    seed: int = 0
    shard_size: int = 64
    batch_size: int | None = None
    store_arrays: bool = True

    def check(self) -> RunConfig:
        from polyviz.api import check_seed, methods
        from polyviz.metrics import METRICS

        known = methods()
        if not self.methods:
            raise InputError("methods: give at least one method (gradcam, saliency, ...)")
        names = [m for m, _ in self.methods]
        for m, opts in self.methods:
            if m not in known:
                raise InputError(f"methods: unknown method {m!r}.{did_you_mean(m, known)} See polyviz methods.")
            bad = [k for k in opts if k not in known[m]["options"] and k != "layer"]
            if bad:
                raise InputError(f"methods: {bad[0]!r} is not an option of {m!r}.{did_you_mean(bad[0], known[m]['options'])}")
        if len(set(names)) != len(names):
            raise InputError(f"methods: each method once, got {names}")
        mnames = [m for m, _ in self.metrics]
        for m, opts in self.metrics:
            if m not in METRICS:
                raise InputError(f"metrics: unknown metric {m!r}.{did_you_mean(m, METRICS)} Known: {', '.join(sorted(METRICS))}")
            check_metric_options(METRICS[m].fn, m, opts)
        if len(set(mnames)) != len(mnames):
            raise InputError(f"metrics: each metric once, got {mnames}")
        if self.target not in TARGETS:
            raise InputError(f"target: expected 'pred' (the predicted class) or 'label' (the manifest's), got {self.target!r}")
        self.seed = check_seed(self.seed)
        for name in ("shard_size", "batch_size"):
            v = getattr(self, name)
            if v is None and name == "batch_size":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InputError(f"{name}: expected a positive int, got {v!r}")
        return self

    def fingerprint(self, inputs: str) -> dict[str, Any]:
        """What must match for a run folder to be resumed: every setting that changes a number."""
        return {"model": self.model.describe(), "methods": [[m, o] for m, o in self.methods],
                "metrics": [[m, o] for m, o in self.metrics], "target": self.target, "seed": self.seed,
                "shard_size": self.shard_size, "store_arrays": self.store_arrays, "inputs": inputs}


def shard_seed(seed: int, shard: int) -> int:
    """The seed of shard ``shard``: ``SeedSequence([seed, shard])``'s first word. A shard's noise
    (SmoothGrad, RISE masks, metric perturbations) depends on the run's seed and the shard only, so
    any engine, worker or retry computes the same numbers for it."""
    return int(np.random.SeedSequence([int(seed), int(shard)]).generate_state(1)[0])
