"""Conformance suite that any polyviz backend, first party or third party, can run against itself.

It builds a tiny network in the backend's framework (through the backend's ``build`` capability)
from numpy weights, and checks every protocol answer against :class:`polyviz.reference.ReferenceNetwork`,
a numpy implementation that is itself checked against finite differences::

    from polyviz.testing import run_conformance
    from polyviz_torch import TorchBackend
    run_conformance(TorchBackend)          # raises AssertionError naming the failed check

In pytest, parametrise over :data:`CHECKS` to see each check as its own test::

    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
    def test_conformance(check):
        check(Conformance(TorchBackend))
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import Any

import numpy as np

from polyviz.errors import InputError, LayerError, PolyvizError, TargetError
from polyviz.models.spec import LayerSpec, NetworkSpec, output_shapes, random_weights
from polyviz.preprocess import Preprocess
from polyviz.protocol import (
    OUTPUT,
    Backend,
    Boxes,
    Capability,
    ChannelMean,
    ClassScore,
    FeatureGroups,
    LayerDistance,
    LayerNorm,
    LowResMasks,
    LRPRule,
    NativeCallable,
    Neuron,
    OutputWeighting,
    Rule,
    materialize_masks,
)
from polyviz.reference import ReferenceNetwork

__all__ = ["Conformance", "CHECKS", "run_conformance", "tiny_spec", "assert_close", "deeplift_oracle", "lrp_oracle"]

RTOL = 1e-4


def tiny_spec(input_shape: tuple[int, int, int] = (12, 12, 3), classes: int = 5) -> NetworkSpec:
    """A tiny VGG-style network: a fused conv+ReLU, a standalone ReLU, pooling, flatten, dense."""
    return NetworkSpec(
        input_shape,
        (
            LayerSpec("conv2d", "conv1", {"filters": 4, "kernel_size": (3, 3), "strides": (1, 1), "padding": "same", "activation": "relu", "use_bias": True}),
            LayerSpec("maxpool2d", "pool1", {"pool_size": (2, 2), "strides": (2, 2)}),
            LayerSpec("conv2d", "conv2", {"filters": 6, "kernel_size": (3, 3), "strides": (1, 1), "padding": "same", "activation": None, "use_bias": True}),
            LayerSpec("relu", "relu2"),
            LayerSpec("maxpool2d", "pool2", {"pool_size": (2, 2), "strides": (2, 2)}),
            LayerSpec("flatten", "flatten"),
            LayerSpec("dense", "fc1", {"units": 8, "activation": "relu", "use_bias": True}),
            LayerSpec("dense", "predictions", {"units": classes, "activation": None, "use_bias": True}),
        ),
    )


def assert_close(actual: np.ndarray, expected: np.ndarray, what: str, rtol: float = RTOL) -> None:
    """Relative L2 error ``|a - e| / max(|e|, tiny)`` at most ``rtol``."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {actual.shape} != expected {expected.shape}")
    err = np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-12)
    if not err <= rtol:
        raise AssertionError(f"{what}: relative L2 error {err:.2e} > {rtol:.0e}")


class Conformance:
    """A backend under test, its tiny model, and the numpy reference of the same network."""

    def __init__(self, backend_cls: type[Backend], seed: int = 0) -> None:
        self.backend_cls = backend_cls
        self.spec = tiny_spec()
        self.weights = random_weights(self.spec, seed)
        self.reference = ReferenceNetwork(self.spec, self.weights)
        rng = np.random.default_rng(seed + 1)
        self.x = rng.normal(size=(3, *self.spec.input_shape)).astype(np.float32)
        self.targets = np.array([0, 3, 1])

    @cached_property
    def built(self) -> tuple[Any, dict[str, str]]:
        return self.backend_cls.build(self.spec, self.weights)

    @property
    def model(self) -> Any:
        return self.built[0]

    def name(self, spec_layer: str) -> str:
        """The backend's name of the layer whose output equals the spec layer's output."""
        return self.built[1][spec_layer]

    @cached_property
    def backend(self) -> Backend:
        return self.backend_cls(self.model)

    def fingerprint(self) -> dict[str, Any]:
        return self.backend_cls.state_fingerprint(self.model)

    def one_hot(self, targets: np.ndarray) -> np.ndarray:
        out = np.zeros((len(targets), self.spec.layers[-1].config["units"]))
        out[np.arange(len(targets)), targets] = 1.0
        return out

    def has(self, capability: str) -> bool:
        return capability in self.backend_cls.capabilities


def _fingerprints_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        va, vb = a[key], b[key]
        if isinstance(va, np.ndarray) or isinstance(vb, np.ndarray):
            if not (np.shape(va) == np.shape(vb) and np.array_equal(va, vb)):
                return False
        elif va != vb:
            return False
    return True


def _unchanged(c: Conformance, before: dict[str, Any], what: str) -> None:
    after = c.fingerprint()
    if not _fingerprints_equal(before, after):
        changed = [k for k in before if k not in after or not _fingerprints_equal({k: before[k]}, {k: after[k]})]
        raise AssertionError(f"{what}: the model changed ({', '.join(changed[:5]) or 'keys differ'})")


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------


def check_reference_matches_finite_differences(c: Conformance) -> None:
    """The yardstick itself: the numpy reference's gradient equals central differences."""
    x = c.x[:1].astype(np.float64)
    grad_out = c.one_hot(np.array([2]))
    analytic = c.reference.input_gradient(x, grad_out)
    rng = np.random.default_rng(0)
    eps = 1e-5
    for _ in range(8):
        idx = tuple(rng.integers(0, s) for s in x.shape)
        plus, minus = x.copy(), x.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric = (c.reference.output(plus)[0, 2] - c.reference.output(minus)[0, 2]) / (2 * eps)
        if not np.isclose(analytic[idx], numeric, rtol=1e-4, atol=1e-7):
            raise AssertionError(f"reference gradient {analytic[idx]} != finite difference {numeric} at {idx}")


def check_claims_and_forward(c: Conformance) -> None:
    """The backend claims its own model; forward equals the reference logits."""
    if not c.backend_cls.claims(c.model):
        raise AssertionError("the backend does not claim the model it built")
    before = c.fingerprint()
    assert_close(c.backend.forward(c.x), c.reference.output(c.x), "forward")
    _unchanged(c, before, "forward")


def check_input_gradient(c: Conformance) -> None:
    """Class-score gradient with per-sample targets equals the reference, and the values too."""
    before = c.fingerprint()
    values, grad = c.backend.input_gradient(c.x, ClassScore(c.targets.tolist()))
    logits = c.reference.output(c.x)
    assert_close(values, logits[np.arange(3), c.targets], "input_gradient values")
    assert_close(grad, c.reference.input_gradient(c.x, c.one_hot(c.targets)), "input_gradient")
    _unchanged(c, before, "input_gradient")


def check_batching_invisible(c: Conformance) -> None:
    """A batch with per-sample targets equals the per-sample calls."""
    _, batch = c.backend.input_gradient(c.x, ClassScore(c.targets.tolist()))
    for i, t in enumerate(c.targets):
        _, single = c.backend.input_gradient(c.x[i : i + 1], ClassScore(int(t)))
        assert_close(single[0], batch[i], f"sample {i} alone vs in the batch")


def check_relu_rules(c: Conformance) -> None:
    """Guided backprop and deconvnet equal the reference's modified backward passes."""
    if not c.has(Capability.RELU_RULES):
        return
    before = c.fingerprint()
    for rule in ("guided", "deconvnet"):
        _, grad = c.backend.input_gradient(c.x, ClassScore(c.targets.tolist()), Rule(relu=rule))
        expected = c.reference.input_gradient(c.x, c.one_hot(c.targets), relu_rule=rule)
        assert_close(grad, expected, f"input_gradient with relu={rule!r}")
    _unchanged(c, before, "relu rules")
    _, plain = c.backend.input_gradient(c.x, ClassScore(c.targets.tolist()))
    assert_close(plain, c.reference.input_gradient(c.x, c.one_hot(c.targets)), "plain gradient after a rule")



# ------------------------------------------------------------------------------------------------
# DeepLIFT (issue 13): the backend's multipliers against a numpy oracle
# ------------------------------------------------------------------------------------------------


def deeplift_oracle(net: ReferenceNetwork, x: np.ndarray, reference: np.ndarray, grad_output: np.ndarray) -> np.ndarray:
    """DeepLIFT multipliers of ``sum(grad_output * output)`` w.r.t. ``x`` against ``reference``, in
    float64 numpy: the batch ``[x, x']`` runs through ``net``, the backward pass applies
    :mod:`polyviz.rules.deeplift` (rescale at every ReLU, Captum's max-pool rule) through
    :class:`~polyviz.rules.deeplift.NumpyOps`, and differentiates linear layers as they are."""
    from polyviz.rules.deeplift import NumpyOps, maxpool_backward, rescale_multiplier

    ops = NumpyOps()
    trace = net.forward(np.concatenate([x, reference]).astype(np.float64))
    g = np.concatenate([grad_output, grad_output]).astype(np.float64)

    def relu(g: np.ndarray, z: np.ndarray) -> np.ndarray:
        return g * rescale_multiplier(ops, z, np.maximum(z, 0.0), lambda: (z > 0).astype(np.float64))

    for idx in range(len(net.spec.layers) - 1, -1, -1):
        layer = net.spec.layers[idx]
        cfg, a_in = layer.config, trace.inputs[idx]
        if layer.kind in ("conv2d", "dense"):
            if cfg.get("activation") == "relu":
                g = relu(g, trace.pre_activations[idx])
            elif cfg.get("activation") not in (None, "linear"):
                raise InputError(f"deeplift_oracle: activation {cfg.get('activation')!r} is not supported")
            g = g @ net.weights[layer.name]["kernel"].T if layer.kind == "dense" else net._conv_back(g, a_in, layer.name, cfg)
        elif layer.kind == "relu":
            g = relu(g, trace.pre_activations[idx])
        elif layer.kind == "maxpool2d":
            g = maxpool_backward(ops, g, a_in, trace.outputs[idx], lambda v, a=a_in, cfg=cfg: net._maxpool_back(v, a, cfg))
        elif layer.kind == "avgpool2d":
            g = net._avgpool_back(g, a_in, cfg)
        elif layer.kind == "flatten":
            g = g.reshape(a_in.shape)
        elif layer.kind not in ("dropout",):
            raise InputError(f"deeplift_oracle: layer kind {layer.kind!r} is not supported")
    return g[: len(x)]


def check_deeplift(c: Conformance) -> None:
    """``deeplift_gradient`` equals the numpy oracle (shared reference and one per sample), its
    values are the objective at ``x``, the attribution is complete, and the model is unchanged."""
    if not c.has(Capability.DEEPLIFT):
        return
    before = c.fingerprint()
    rng = np.random.default_rng(7)
    for reference in (np.zeros_like(c.x), (c.x * 0.5 + rng.normal(scale=0.3, size=c.x.shape)).astype(np.float32)):
        out = c.backend.deeplift_gradient(c.x, reference, ClassScore(c.targets.tolist()))
        expected = deeplift_oracle(c.reference, c.x, reference, c.one_hot(c.targets))
        assert_close(out.gradient, expected, "deeplift_gradient multipliers")
        logits = c.reference.output(c.x)
        assert_close(out.values, logits[np.arange(len(c.x)), c.targets], "deeplift_gradient values")
        gain = logits - c.reference.output(reference)
        attr = ((c.x - reference) * np.asarray(out.gradient, np.float64)).reshape(len(c.x), -1).sum(axis=1)
        want = gain[np.arange(len(c.x)), c.targets]
        if not np.all(np.abs(attr - want) <= 1e-3 * np.abs(want) + 1e-6):
            raise AssertionError(f"deeplift completeness: sums {attr} != S(x) - S(x') {want}")
    _unchanged(c, before, "deeplift")

def check_layer_activations(c: Conformance) -> None:
    """Activations of fused, standalone-ReLU and pooling layers, and the output when asked."""
    trace = c.reference.forward(c.x)
    spec_layers = ["conv1", "relu2", "pool2", "fc1"]
    acts = c.backend.layer_activations(c.x, [c.name(s) for s in spec_layers], include_output=True)
    for s in spec_layers:
        assert_close(acts[c.name(s)], trace.outputs[c.reference.index(s)], f"activation of {s}")
    assert_close(acts[OUTPUT], trace.outputs[-1], "output alongside activations")


def check_layer_gradients(c: Conformance) -> None:
    """Gradients w.r.t. layer activations equal the reference (plain and guided)."""
    if not c.has(Capability.LAYER_GRADIENTS):
        return
    trace = c.reference.forward(c.x)
    grad_out = c.one_hot(c.targets)
    for rule in (None, "guided"):
        if rule and not c.has(Capability.RELU_RULES):
            continue
        names = [c.name("relu2"), c.name("conv1")]
        res = c.backend.layer_gradients(c.x, names, ClassScore(c.targets.tolist()), Rule(relu=rule))
        for s in ("relu2", "conv1"):
            idx = c.reference.index(s)
            expected = c.reference.backward(trace, grad_out, upto=idx + 1, relu_rule=rule)
            assert_close(res.gradients[c.name(s)], expected, f"layer gradient of {s} (rule={rule})")
            assert_close(res.activations[c.name(s)], trace.outputs[idx], f"layer activation of {s}")
        assert_close(res.values, trace.outputs[-1][np.arange(3), c.targets], "layer_gradients values")


def check_objectives(c: Conformance) -> None:
    """Every plain-data objective's input gradient equals the reference."""
    x = c.x
    trace = c.reference.forward(x)
    relu2 = trace.outputs[c.reference.index("relu2")]
    fc1 = trace.outputs[c.reference.index("fc1")]
    n, h, w, ch = relu2.shape
    cases = []
    channels = np.array([0, 5, 2])
    g = np.zeros_like(relu2)
    g[np.arange(n), :, :, channels] = 1.0 / (h * w)
    cases.append((ChannelMean(c.name("relu2"), channels.tolist()), "relu2", g, relu2[np.arange(n), :, :, channels].mean(axis=(1, 2))))
    g = np.zeros_like(fc1)
    g[:, 3] = 1.0
    cases.append((ChannelMean(c.name("fc1"), 3), "fc1", g, fc1[:, 3]))
    g = np.zeros_like(relu2)
    g[:, 1, 2, 4] = 1.0
    cases.append((Neuron(c.name("relu2"), (1, 2, 4)), "relu2", g, relu2[:, 1, 2, 4]))
    sel = (1, 4)
    g = np.zeros_like(relu2)
    g[..., list(sel)] = 2 * relu2[..., list(sel)] / (h * w * len(sel))
    cases.append((LayerNorm(c.name("relu2"), sel), "relu2", g, (relu2[..., list(sel)] ** 2).mean(axis=(1, 2, 3))))
    g = 2 * relu2 / relu2[0].size
    cases.append((LayerNorm(c.name("relu2")), "relu2", g, (relu2**2).mean(axis=(1, 2, 3))))
    ref = np.random.default_rng(3).normal(size=relu2.shape[1:]).astype(np.float32)
    cases.append((LayerDistance(c.name("relu2"), ref), "relu2", 2 * (relu2 - ref), ((relu2 - ref) ** 2).sum(axis=(1, 2, 3))))
    for objective, layer, g_layer, expected_values in cases:
        values, grad = c.backend.input_gradient(x, objective)
        what = f"{type(objective).__name__} on {layer}"
        assert_close(values, expected_values, what + " values")
        assert_close(grad, c.reference.layer_objective_gradient(x, layer, g_layer), what)
    weights = np.random.default_rng(4).normal(size=trace.outputs[-1].shape[1:]).astype(np.float32)
    values, grad = c.backend.input_gradient(x, OutputWeighting(weights))
    assert_close(values, trace.outputs[-1] @ weights, "OutputWeighting values")
    assert_close(grad, c.reference.input_gradient(x, np.broadcast_to(weights, trace.outputs[-1].shape)), "OutputWeighting")


def check_native_callable(c: Conformance) -> None:
    """The escape hatch: a framework-native function of the output, written with operators only."""
    if not c.has(Capability.CALLABLE_OBJECTIVE):
        return
    values, grad = c.backend.input_gradient(c.x, NativeCallable(lambda out: out[:, 1] * 2.0 - out[:, 0]))
    logits = c.reference.output(c.x)
    assert_close(values, logits[:, 1] * 2 - logits[:, 0], "NativeCallable values")
    grad_out = np.zeros_like(logits)
    grad_out[:, 1], grad_out[:, 0] = 2.0, -1.0
    assert_close(grad, c.reference.input_gradient(c.x, grad_out), "NativeCallable gradient")


def check_masked_scores(c: Conformance) -> None:
    """Masked batches built on the device equal the numpy definition of the masks."""
    if not c.has(Capability.MASKED_SCORES):
        return
    h, w, _ = c.spec.input_shape
    rng = np.random.default_rng(5)
    specs = [
        Boxes(np.array([[0, 0, 4, 4], [3, 5, 9, 12], [8, 8, 12, 12]])),
        FeatureGroups(rng.integers(0, 4, size=(h, w)), rng.integers(0, 2, size=(5, 4)).astype(np.float32)),
        LowResMasks(rng.random((4, 3, 3)).astype(np.float32), normalize=True),
        LowResMasks(rng.random((3, 4, 4)).astype(np.float32), mode="nearest"),
        LowResMasks(rng.random((2, 3, 3)).astype(np.float32), upsampled_size=(16, 16), offsets=np.array([[1, 3], [4, 0]])),
    ]
    baseline = rng.normal(size=c.spec.input_shape).astype(np.float32)
    before = c.fingerprint()
    for spec in specs:
        m = len(spec)
        index = np.arange(m) % len(c.x)
        got = c.backend.masked_scores(c.x, spec, baseline, sample_index=index)
        full = materialize_masks(spec, h, w)[..., None]
        expected = c.reference.output(c.x[index] * full + baseline * (1 - full))
        assert_close(got, expected, f"masked_scores with {type(spec).__name__}")
        targets = (np.arange(m) * 2) % 5
        got_obj = c.backend.masked_scores(c.x, spec, 0.5, sample_index=index, objective=ClassScore(targets.tolist()))
        expected = c.reference.output(c.x[index] * full + 0.5 * (1 - full))[np.arange(m), targets]
        assert_close(got_obj, expected, f"masked_scores objective with {type(spec).__name__}")
    _unchanged(c, before, "masked_scores")


def check_layer_masked_scores(c: Conformance) -> None:
    """Scores with a layer's channels scaled per mask equal the reference (Ablation-CAM)."""
    if not c.has(Capability.LAYER_MASKED_SCORES):
        return
    rng = np.random.default_rng(6)
    before = c.fingerprint()
    for spec_layer, channels in (("relu2", 6), ("conv1", 4)):
        keep = (rng.random((5, channels)) > 0.3).astype(np.float32)
        index = np.array([0, 1, 2, 0, 2])
        got = c.backend.layer_masked_scores(c.x, c.name(spec_layer), keep, sample_index=index)
        expected = np.stack(
            [c.reference.forward(c.x[i : i + 1], scale=(spec_layer, k)).outputs[-1][0] for i, k in zip(index, keep)]
        )
        assert_close(got, expected, f"layer_masked_scores on {spec_layer}")
        targets = [0, 1, 2, 3, 4]
        got = c.backend.layer_masked_scores(c.x, c.name(spec_layer), keep, sample_index=index, objective=ClassScore(targets))
        assert_close(got, expected[np.arange(5), targets], f"layer_masked_scores objective on {spec_layer}")
    _unchanged(c, before, "layer_masked_scores")


def check_layers_listing(c: Conformance) -> None:
    """layers() lists the mapped layers with the spec's output shapes; weights read back exactly."""
    c.backend.forward(c.x)
    infos = {info.name: info for info in c.backend.layers()}
    shapes = dict(zip([layer.name for layer in c.spec.layers], output_shapes(c.spec)))
    for spec_name, native in c.built[1].items():
        if native not in infos:
            raise AssertionError(f"layers(): {native!r} (spec {spec_name}) is not listed")
        got = infos[native].output_shape
        if got is not None and tuple(got) != tuple(shapes[spec_name]):
            raise AssertionError(f"layers(): {native!r} output shape {got} != {shapes[spec_name]}")
    conv1_params = sum(v.size for v in c.weights["conv1"].values())
    if not any(info.params == conv1_params for info in infos.values()):
        raise AssertionError(f"layers(): no layer reports conv1's {conv1_params} parameters")
    if c.has(Capability.LAYER_WEIGHTS):
        for spec_name in ("fc1", "predictions"):
            got = c.backend.layer_weights(c.name(spec_name))
            for key, value in c.weights[spec_name].items():
                assert_close(got[key], value, f"layer_weights({spec_name})[{key}]")


def check_preprocess(c: Conformance) -> None:
    """Preprocessing is applied inside the differentiable path: gradients are w.r.t. the raw image."""
    pre = Preprocess(mean=(0.2, -0.1, 0.3), std=(0.5, 2.0, 1.5), scale=0.5, channel_order="BGR")
    backend = c.backend_cls(c.model, preprocess=pre)
    x = c.x
    logits = c.reference.output(pre.apply(x))
    assert_close(backend.forward(x), logits, "forward with preprocessing")
    _, grad = backend.input_gradient(x, ClassScore(c.targets.tolist()))
    g_model = c.reference.input_gradient(pre.apply(x), c.one_hot(c.targets))
    expected = (g_model / np.asarray(pre.std))[..., ::-1] * pre.scale
    assert_close(grad, expected, "gradient through preprocessing")


def check_bad_inputs(c: Conformance) -> None:
    """Bad inputs raise polyviz errors that name the argument, and leave the model unchanged."""
    before = c.fingerprint()
    layout = np.transpose(c.x, (0, 3, 1, 2))
    nan = c.x.copy()
    nan[0, 0, 0, 0] = np.nan
    cases: list[tuple[str, type[PolyvizError], str, Callable[[], Any]]] = [
        ("rank 3", InputError, "x", lambda: c.backend.forward(c.x[0])),
        ("channels-first", InputError, "x", lambda: c.backend.forward(layout)),
        ("NaN", InputError, "x", lambda: c.backend.input_gradient(nan, ClassScore(0))),
        ("unknown layer", LayerError, "layer", lambda: c.backend.layer_activations(c.x, ["no_such_layer"])),
        ("target out of range", TargetError, "target", lambda: c.backend.input_gradient(c.x, ClassScore(99))),
        ("wrong target count", TargetError, "target", lambda: c.backend.input_gradient(c.x, ClassScore([0, 1]))),
        ("channel out of range", TargetError, "channel", lambda: c.backend.input_gradient(c.x, ChannelMean(c.name("relu2"), 99))),
    ]
    for what, error, argument, call in cases:
        try:
            call()
        except error as exc:
            if argument not in str(exc):
                raise AssertionError(f"{what}: the message does not name {argument!r}: {exc}") from None
        except Exception as exc:
            raise AssertionError(f"{what}: raised {type(exc).__name__} instead of {error.__name__}: {exc}") from None
        else:
            raise AssertionError(f"{what}: no error raised")
    _unchanged(c, before, "bad inputs")


def check_safety_when_objective_raises(c: Conformance) -> None:
    """An exception from inside the call (a user objective) leaves no trace on the model."""
    if not c.has(Capability.CALLABLE_OBJECTIVE):
        return
    before = c.fingerprint()

    class Boom(Exception):
        pass

    def boom(out: Any) -> Any:
        raise Boom("raised inside the objective")

    for rule in (Rule(), Rule(relu="guided")):
        try:
            c.backend.input_gradient(c.x, NativeCallable(boom), rule)
        except Boom:
            pass
        else:
            raise AssertionError("the objective's exception was swallowed")
        _unchanged(c, before, f"exception inside the objective (rule={rule.relu})")
    # and the backend still works afterwards
    assert_close(c.backend.forward(c.x), c.reference.output(c.x), "forward after an exception")


def check_replaced_layer_gradients(c: Conformance) -> None:
    """The forward continued from another batch's activations of a layer gives that batch's
    scores and layer gradients (the network above the layer sees only the replacement)."""
    if not c.has(Capability.LAYER_REPLACE):
        return
    before = c.fingerprint()
    other = c.x[::-1] * 0.5
    trace = c.reference.forward(other)
    for s in ("relu2", "fc1"):
        idx = c.reference.index(s)
        activation = trace.outputs[idx].astype(np.float32)
        res = c.backend.replaced_layer_gradients(c.x, c.name(s), activation, ClassScore(c.targets.tolist()))
        expected = c.reference.backward(trace, c.one_hot(c.targets), upto=idx + 1)
        assert_close(res.values, trace.outputs[-1][np.arange(3), c.targets], f"replaced_layer_gradients values at {s}")
        assert_close(res.gradients[c.name(s)], expected, f"replaced_layer_gradients gradient at {s}")
        assert_close(res.activations[c.name(s)], activation, f"replaced_layer_gradients activation at {s}")
    _unchanged(c, before, "replaced_layer_gradients")


CHECKS: list[Callable[[Conformance], None]] = [
    check_reference_matches_finite_differences,
    check_claims_and_forward,
    check_input_gradient,
    check_batching_invisible,
    check_relu_rules,
    check_deeplift,
    check_layer_activations,
    check_layer_gradients,
    check_objectives,
    check_native_callable,
    check_masked_scores,
    check_layer_masked_scores,
    check_replaced_layer_gradients,
    check_layers_listing,
    check_preprocess,
    check_bad_inputs,
    check_safety_when_objective_raises,
]


class _Pool:
    """A reference pooling layer as :class:`~polyviz.rules.ops.NumpyOps` wants it (its transpose)."""

    def __init__(self, reference: ReferenceNetwork, kind: str, cfg: dict) -> None:
        self.reference, self.kind, self.cfg = reference, kind, cfg

    def transpose(self, seed: np.ndarray, a: np.ndarray) -> np.ndarray:
        if self.kind == "global_avgpool":
            return np.broadcast_to(seed[:, None, None, :] / (a.shape[1] * a.shape[2]), a.shape).copy()
        return self.reference._avgpool_back(seed, a, self.cfg)


def lrp_oracle(reference: ReferenceNetwork, x: np.ndarray, seed: np.ndarray, rules: dict[str, LRPRule]) -> np.ndarray:
    """Relevance at the input of a reference network (float64 numpy), with ``rules`` per spec layer
    name and ``seed`` the relevance at the output: the shared rules of :mod:`polyviz.rules.lrp` over
    :class:`~polyviz.rules.ops.NumpyOps`, ReLUs passing relevance through, max pools routing it to
    the maximum."""
    from polyviz.rules import lrp as lrp_rules
    from polyviz.rules.ops import NumpyLinear, NumpyOps

    ops = NumpyOps()
    trace = reference.forward(x)
    r = np.asarray(seed, np.float64)
    for idx in range(len(reference.spec.layers) - 1, -1, -1):
        layer = reference.spec.layers[idx]
        cfg, a = layer.config, trace.inputs[idx]
        if layer.kind in ("conv2d", "dense"):
            op = NumpyLinear(layer.kind, tuple(cfg.get("strides", (1, 1))), cfg.get("padding", "valid"))
            w = reference.weights[layer.name]
            r = lrp_rules.linear_relevance(ops, op, rules[layer.name], w["kernel"], w.get("bias"), a, r,
                                           trace.pre_activations[idx])
        elif layer.kind == "maxpool2d":
            r = reference._maxpool_back(r, a, cfg)
        elif layer.kind in ("avgpool2d", "global_avgpool"):
            r = lrp_rules.average_relevance(ops, _Pool(reference, layer.kind, cfg), a, r, trace.outputs[idx])
        elif layer.kind == "flatten":
            r = r.reshape(a.shape)
        elif layer.kind not in ("relu", "dropout"):
            raise InputError(f"the LRP oracle has no rule for a {layer.kind!r} layer")
    return r


#: Rule assignments the LRP check runs: (first layer, other convs, dense layers).
LRP_CASES = (
    (LRPRule("zero"), LRPRule("zero"), LRPRule("zero")),
    (LRPRule("zbox", low=-1.0, high=1.0), LRPRule("epsilon", epsilon=0.25), LRPRule("epsilon", epsilon=0.25)),
    (LRPRule("flat"), LRPRule("gamma", gamma=0.25), LRPRule("epsilon", epsilon=1e-6)),
    (LRPRule("flat"), LRPRule("alpha_beta", alpha=1.0, beta=0.0), LRPRule("epsilon", epsilon=1e-6)),
    (LRPRule("alpha_beta", alpha=2.0, beta=1.0), LRPRule("alpha_beta", alpha=2.0, beta=1.0), LRPRule("zero")),
)


def check_lrp(c: Conformance) -> None:
    """LRP (every rule: zero, epsilon, gamma, alpha-beta, z^B, flat) equals the numpy oracle
    :func:`lrp_oracle`, seeded with the target's one-hot; the model is unchanged."""
    from polyviz.techniques.lrp import weighted_layers

    if not c.has(Capability.LRP):
        return
    before = c.fingerprint()
    weighted = [layer for layer in c.spec.layers if layer.kind in ("conv2d", "dense")]
    for first, conv, dense in LRP_CASES:
        chosen = {layer.name: (first if i == 0 else conv if layer.kind == "conv2d" else dense)
                  for i, layer in enumerate(weighted)}
        names = [name for name, _ in weighted_layers(c.backend)]  # the backend's names, in order
        rule = Rule(lrp=tuple(zip(names, chosen.values(), strict=True)))
        values, relevance = c.backend.input_gradient(c.x, ClassScore(c.targets.tolist()), rule)
        expected = lrp_oracle(c.reference, c.x, c.one_hot(c.targets), chosen)
        assert_close(values, c.reference.output(c.x)[np.arange(3), c.targets], "LRP values")
        assert_close(relevance, expected, f"LRP relevance ({first.name}, {conv.name}, {dense.name})")
    _unchanged(c, before, "LRP")


CHECKS.append(check_lrp)


def run_conformance(backend_cls: type[Backend], seed: int = 0) -> None:
    """Run every check; raise AssertionError listing the checks that failed."""
    c = Conformance(backend_cls, seed)
    failures = []
    for check in CHECKS:
        try:
            check(c)
        except Exception as exc:  # collect every failure, not just the first
            failures.append(f"{check.__name__}: {type(exc).__name__}: {exc}")
    if failures:
        raise AssertionError("conformance failures:\n  " + "\n  ".join(failures))

