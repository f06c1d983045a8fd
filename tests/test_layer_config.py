"""polyviz.layer_config: a layer's configuration in one vocabulary for every framework. The same
spec built in torch and in Keras answers the same configs, equal to the spec's (closed form)."""

import pytest

import polyviz
from backends import ALL, both_frameworks, build
from polyviz.errors import LayerError
from polyviz.models.spec import LayerSpec, NetworkSpec, vgg_spec


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def expected_config(layer: LayerSpec) -> dict:
    """The spec layer's config in layer_config's vocabulary (spec defaults filled in)."""
    cfg = layer.config
    if layer.kind == "conv2d":
        return {"kind": "conv2d", "filters": cfg["filters"], "kernel_size": pair(cfg["kernel_size"]),
                "strides": pair(cfg.get("strides", 1)), "padding": cfg.get("padding", "valid"), "dilation": (1, 1),
                "activation": cfg.get("activation"), "use_bias": cfg.get("use_bias", True)}
    if layer.kind == "dense":
        return {"kind": "dense", "units": cfg["units"], "activation": cfg.get("activation"),
                "use_bias": cfg.get("use_bias", True)}
    if layer.kind in ("maxpool2d", "avgpool2d"):
        size = pair(cfg.get("pool_size", 2))
        return {"kind": layer.kind, "pool_size": size, "strides": pair(cfg.get("strides", size)), "padding": "valid"}
    return {"kind": layer.kind, **({"rate": cfg["rate"]} if layer.kind == "dropout" else {})}


SPECS = {
    "vgg": vgg_spec([[4, 4], [8]], input_shape=(16, 16, 3), dense=(12,), classes=5, dropout=0.5),
    "mixed": NetworkSpec((19, 17, 3), (
        LayerSpec("conv2d", "c1", {"filters": 6, "kernel_size": (5, 3), "strides": (2, 2), "padding": "valid",
                                   "activation": None, "use_bias": False}),
        LayerSpec("relu", "r1"),
        LayerSpec("avgpool2d", "p1", {"pool_size": (2, 2), "strides": (1, 1)}),
        LayerSpec("conv2d", "c2", {"filters": 3, "kernel_size": (3, 3), "strides": (1, 1), "padding": "same",
                                   "activation": "relu", "use_bias": True}),
        LayerSpec("global_avgpool", "gap"),
        LayerSpec("dense", "out", {"units": 4, "activation": None, "use_bias": True}),
    )),
}


@both_frameworks
@pytest.mark.parametrize("which", sorted(SPECS))
def test_layer_config_is_the_spec_in_both_frameworks(which):
    spec = SPECS[which]
    (tmodel, tnames), (kmodel, knames) = build("torch", spec), build("keras", spec)
    checked = 0
    for layer in spec.layers:
        if layer.kind not in ("conv2d", "dense", "maxpool2d", "avgpool2d", "dropout"):
            continue  # torch has no one module for a global average pool (AdaptiveAvgPool2d + Flatten)
        if layer.name not in tnames or layer.name not in knames:
            continue
        t = polyviz.layer_config(tmodel, tnames[layer.name], input_shape=spec.input_shape)
        k = polyviz.layer_config(kmodel, knames[layer.name])
        assert t == k == expected_config(layer), layer.name
        checked += 1
    assert checked == (8 if which == "vgg" else 4)


@both_frameworks
def test_torch_relu_after_a_conv_answers_the_fused_layer():
    spec = SPECS["vgg"]
    tmodel, tnames = build("torch", spec)
    relu = tnames["block1_conv1"]  # the ReLU module whose output is the Keras conv's output
    prefix, index = relu.rsplit(".", 1)
    conv = f"{prefix}.{int(index) - 1}"
    assert polyviz.layer_config(tmodel, relu)["activation"] == "relu"
    assert polyviz.layer_config(tmodel, conv) == {**polyviz.layer_config(tmodel, relu), "activation": None}
    assert polyviz.layer_config(tmodel, "features")["kind"] == "other"  # a container
    # a probe at the default 224 px fails at the first Linear of this 16 px model: the ReLU after it
    # still answers the fused dense layer (its previous module in the same nn.Sequential)
    fresh, _ = build("torch", spec)
    assert polyviz.layer_config(fresh, tnames["fc1"]) == {"kind": "dense", "units": 12, "activation": "relu",
                                                          "use_bias": True}


@pytest.mark.parametrize("framework", ALL)
def test_layer_config_unknown_name_did_you_mean(framework):
    model, names = build(framework, SPECS["vgg"])
    wrong = names["block2_conv1"][:-1] + "x"
    with pytest.raises(LayerError, match=r"layer: no layer named .*Did you mean"):
        polyviz.layer_config(model, wrong)
