"""polyviz.summary / activations / filters: closed-form parameter counts, the numpy reference
network's feature maps, the weights given to build, and the same table in every framework."""

import numpy as np
import pytest

import polyviz
from backends import both_frameworks, build
from polyviz.errors import InputError, LayerError
from polyviz.models.spec import output_shapes, random_weights, vgg_spec
from polyviz.reference import ReferenceNetwork

SPEC = vgg_spec([[4, 4], [8]], input_shape=(16, 16, 3), dense=(10,), classes=3)


def closed_form_params(spec):
    """Conv: kh*kw*in*out + out; dense: in*out + out; everything else: 0."""
    counts, shape = {}, tuple(spec.input_shape)
    for layer, out in zip(spec.layers, output_shapes(spec)):
        if layer.kind == "conv2d":
            kh, kw = layer.config["kernel_size"]
            counts[layer.name] = kh * kw * shape[-1] * out[-1] + out[-1]
        elif layer.kind == "dense":
            counts[layer.name] = int(np.prod(shape)) * out[-1] + out[-1]
        shape = out
    return counts


def test_closed_form_helper():
    # block1_conv1 3x3x3x4+4, block1_conv2 3x3x4x4+4, block2_conv1 3x3x4x8+8, fc1 (4*4*8)x10+10, 10x3+3
    assert closed_form_params(SPEC) == {"block1_conv1": 112, "block1_conv2": 148, "block2_conv1": 296,
                                        "fc1": 1290, "predictions": 33}


def test_summary_params_and_shapes(bk, capsys):
    model, names = build(bk, SPEC)
    rows = polyviz.summary(model, input_shape=SPEC.input_shape)
    by_name = {r.name: r for r in rows}
    expected = closed_form_params(SPEC)
    assert rows.total_params == sum(expected.values()) == rows.trainable_params
    assert rows.non_trainable_params == 0
    for layer, shape in zip(SPEC.layers, output_shapes(SPEC)):
        if layer.name not in names:  # torch's flatten is ordered differently: not mapped
            continue
        row = by_name[names[layer.name]]
        assert row.output_shape == tuple(shape)
        if layer.name in expected and bk != "torch":  # torch maps a fused conv to its ReLU (0 params)
            assert row.params == expected[layer.name] and row.trainable
    assert sorted(r.params for r in rows if r.params) == sorted(expected.values())
    out = capsys.readouterr().out
    assert f"Total params: {rows.total_params:,}" in out and "Layer (type)" in out
    assert str(rows).splitlines()[-3:] == out.strip().splitlines()[-3:]


@both_frameworks
def test_summary_same_table_in_torch_and_keras():
    tmodel, tnames = build("torch", SPEC)
    kmodel, knames = build("keras", SPEC)
    trows = polyviz.summary(tmodel, input_shape=(16, 16, 3), print_table=False)
    krows = polyviz.summary(kmodel, print_table=False)
    assert "features" not in {r.name for r in trows}  # the Sequential container is not a row
    t, k = {r.name: r for r in trows}, {r.name: r for r in krows}
    shared = [name for name in tnames if name in knames]
    assert len(shared) >= 6
    for name in shared:
        assert t[tnames[name]].output_shape == k[knames[name]].output_shape, name
    assert (trows.total_params, trows.trainable_params) == (krows.total_params, krows.trainable_params)
    # the weighted layers, in order, with the same counts
    assert [r.params for r in trows if r.params] == [r.params for r in krows if r.params]


def test_activations_equal_reference(bk):
    model, names = build(bk, SPEC, seed=3)
    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)
    trace = ReferenceNetwork(SPEC, random_weights(SPEC, 3)).forward(x)
    wanted = ["block1_conv2", "block1_pool", "block2_conv1", "fc1"]
    acts = polyviz.activations(model, x, [names[w] for w in wanted], layout="NHWC")
    assert list(acts) == [names[w] for w in wanted]
    for w in wanted:
        expected = trace.outputs[[layer.name for layer in SPEC.layers].index(w)]
        got = acts[names[w]]
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_activations_native_layout_and_single_name(bk):
    model, names = build(bk, SPEC)
    x = np.random.default_rng(1).random((1, 16, 16, 3)).astype(np.float32)
    native = x.transpose(0, 3, 1, 2) if bk == "torch" else x
    one = polyviz.activations(model, native, names["block2_conv1"])
    both = polyviz.activations(model, x, [names["block2_conv1"]], layout="NHWC")
    np.testing.assert_array_equal(one[names["block2_conv1"]], both[names["block2_conv1"]])
    assert one[names["block2_conv1"]].shape == (1, 8, 8, 8)


def test_filters_equal_build_weights(bk):
    model, names = build(bk, SPEC, seed=5)
    weights = random_weights(SPEC, 5)
    for layer in ("block1_conv1", "block2_conv1"):
        k = polyviz.filters(model, names[layer])
        assert k.dtype == np.float32
        np.testing.assert_array_equal(k, weights[layer]["kernel"].astype(np.float32))
    # a dense kernel's rows follow the flattened (H, W, C) map, so torch needs the input size
    dense = polyviz.filters(model, names["fc1"], input_shape=SPEC.input_shape)
    np.testing.assert_array_equal(dense, weights["fc1"]["kernel"])


def test_unknown_layer_did_you_mean(bk):
    model, names = build(bk, SPEC)
    x = np.zeros((1, 16, 16, 3), np.float32)
    typo = names["block2_conv1"] + "x"
    with pytest.raises(LayerError, match="Did you mean"):
        polyviz.activations(model, x, [typo], layout="NHWC")
    with pytest.raises(LayerError, match="Did you mean"):
        polyviz.filters(model, typo)
    with pytest.raises(LayerError, match="has no kernel"):
        polyviz.filters(model, names["block1_pool"])


def test_summary_bad_input_shape(bk):
    model, _ = build(bk, SPEC)
    with pytest.raises(InputError, match="input_shape"):
        polyviz.summary(model, input_shape=(16, 16), print_table=False)
