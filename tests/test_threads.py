"""Concurrent polyviz calls on one torch model (issue 12, item 2).

Calls on one model from several threads must each give the single-threaded answer and leave the
model exactly as it was: polyviz serialises its calls per model, and its hooks act only in the
thread that installed them (see ``polyviz_torch._threads``). Tiny models, so this runs in seconds.
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from polyviz_torch import TorchBackend  # noqa: E402
from torch import nn  # noqa: E402

import polyviz  # noqa: E402

SIZE = 16


class BatchNormNet(nn.Module):
    """Conv-BN-ReLU, Dropout, a functional ReLU, a max pool and a Linear head; left in train mode."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(8 * (SIZE // 2) ** 2, 5)

    def forward(self, x):
        x = self.drop(self.relu(self.bn(self.conv1(x))))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.head(x.flatten(1))


def dropout_net() -> nn.Module:
    """No BatchNorm (LRP refuses one without a rule), Dropout, train mode."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.3),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(8 * (SIZE // 2) ** 2, 5),
    )


def seeded(make, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = make()
    with torch.no_grad():  # non-trivial running statistics, so that eval and train mode differ
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(7)
    return model.train()


def fingerprint(model: nn.Module) -> dict:
    """TorchBackend's state fingerprint (state dict incl. buffers, requires_grad, .grad, training
    flags, every hook registry) plus the raw bytes of the state dict."""
    fp = TorchBackend.state_fingerprint(model)
    fp["state_dict_bytes"] = tuple(
        (k, v.detach().cpu().numpy().tobytes()) for k, v in model.state_dict(keep_vars=True).items()
    )
    return fp


def same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray) or isinstance(b[key], np.ndarray):
            assert np.array_equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def no_hooks(model: nn.Module) -> None:
    for name, module in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
            assert not getattr(module, attr), f"{name}: {attr} left behind"


# (model key, method, options): every family: gradients, rules, path methods, CAMs (layer
# gradients with an aborted forward), perturbation (masked scores), layer methods (activations,
# replaced layers, layer masked scores), DeepLIFT and LRP.
CALLS = [
    ("bn", "saliency", {}),
    ("bn", "guided_backprop", {}),
    ("bn", "deconvnet", {}),
    ("bn", "integrated_gradients", {"n_steps": 8}),
    ("bn", "gradcam", {"layer": "conv2"}),
    ("bn", "scorecam", {"layer": "bn"}),
    ("bn", "ablationcam", {"layer": "conv2"}),
    ("bn", "occlusion", {"window": (4, 4), "stride": (4, 4)}),
    ("bn", "deeplift", {}),
    ("bn", "layer_activation", {"layer": "conv1"}),
    ("bn", "layer_integrated_gradients", {"layer": "conv1", "n_steps": 6}),
    ("bn", "neuron_gradient", {"layer": "conv2", "neuron": (2, 3, 1)}),
    ("bn", "internal_influence", {"layer": "bn", "n_steps": 6}),
    ("drop", "lrp", {}),
    ("drop", "saliency", {}),
    ("drop", "layer_guided_backprop", {"layer": "3", "channel": 2}),
    ("drop", "gradcam_plus_plus", {"layer": "3"}),
]


def run(models: dict, x: np.ndarray, call: tuple) -> tuple[str, object]:
    key, method, options = call
    try:
        values = polyviz.explain(models[key], x, method, target=[1, 3], progress=False, **options).attribution
        return "ok", np.array(values, copy=True)
    except Exception as exc:  # compared as (type, message) with the single-threaded outcome
        return "error", (type(exc).__name__, (str(exc).splitlines() or [""])[0])


def check(expected: tuple, got: tuple, call: tuple) -> None:
    assert got[0] == expected[0], (call, got)
    if got[0] == "ok":
        np.testing.assert_allclose(got[1], expected[1], rtol=1e-6, atol=1e-7, err_msg=str(call))
    else:
        assert got[1] == expected[1], call


@pytest.fixture
def switchy():
    """Switch threads often, so that calls interleave on a small machine."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def test_concurrent_calls_give_single_threaded_results_and_leave_the_model(switchy):
    models = {"bn": seeded(BatchNormNet, 0), "drop": seeded(dropout_net, 1)}
    x = np.random.default_rng(0).uniform(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    before = {key: fingerprint(m) for key, m in models.items()}
    expected = [run(models, x, call) for call in CALLS]
    assert [e[0] for e in expected] == ["ok"] * len(CALLS), expected
    for key, model in models.items():
        same(before[key], fingerprint(model))

    threads, rounds = 4, 3
    jobs = [(i, (t + r + i) % len(CALLS)) for t in range(threads) for r in range(rounds) for i in range(len(CALLS))]
    with ThreadPoolExecutor(threads) as pool:
        outcomes = list(pool.map(lambda job: (job[1], run(models, x, CALLS[job[1]])), jobs))
    for index, got in outcomes:
        check(expected[index], got, CALLS[index])
    for key, model in models.items():
        same(before[key], fingerprint(model))
        no_hooks(model)
        assert model.training and all(m.training for m in model.modules())


class Gate(nn.Module):
    """Identity that, once armed, in the thread named ``polyviz``, says it is running and waits to
    be let go."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.inside = threading.Event()
        self.go = threading.Event()

    def forward(self, x):
        if self.armed and threading.current_thread().name == "polyviz":
            self.inside.set()
            assert self.go.wait(30)
        return x


@pytest.mark.parametrize("warm", [False, True], ids=["during-probe", "during-gradcam"])
def test_a_users_own_forward_during_a_polyviz_call_is_not_touched_by_its_hooks(warm):
    """While polyviz runs its probe forward (hooks counting every module's calls) or Grad-CAM (a
    hook on layer ``3`` captures, then aborts the forward), the user's own forward of the same model
    in another thread gets the model's plain output (no ``_StopForward``, no replaced activation),
    and the polyviz call gives its single-threaded result (no "called 2 times"). (The user's forward
    does see eval mode: see ``polyviz_torch._threads``.)"""
    torch.manual_seed(0)
    gate = Gate()
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), gate, nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * SIZE * SIZE, 3)).eval()
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        plain = model(x).clone()
    before = fingerprint(model)
    expected = polyviz.explain(model, x.numpy(), "gradcam", layer="3", target=0, progress=False) if warm else None
    gate.armed = True
    result = {}

    def explain():
        result["e"] = polyviz.explain(model, x.numpy(), "gradcam", layer="3", target=0, progress=False)

    worker = threading.Thread(target=explain, name="polyviz")
    worker.start()
    try:
        assert gate.inside.wait(60), "the polyviz call did not reach the gate"
        with torch.no_grad():
            mine = model(x)  # the user's forward, while polyviz's hooks are registered
        torch.testing.assert_close(mine, plain, rtol=0, atol=0)
    finally:
        gate.go.set()
        worker.join(60)
    assert "e" in result
    if expected is not None:
        np.testing.assert_array_equal(result["e"].attribution, expected.attribution)
    same(before, fingerprint(model))
    no_hooks(model)


def test_model_lock_excludes_polyviz_calls_and_is_per_model():
    """``polyviz_torch.model_lock(model)`` is the lock polyviz calls hold: re-entrant, one per model."""
    from polyviz_torch import model_lock

    a, b = seeded(dropout_net, 2), seeded(dropout_net, 3)
    assert model_lock(a) is model_lock(a)
    assert model_lock(a) is not model_lock(b)
    x = np.random.default_rng(1).uniform(size=(1, 3, SIZE, SIZE)).astype(np.float32)
    done = threading.Event()

    def call():
        polyviz.explain(a, x, "saliency", target=0, progress=False)
        done.set()

    with model_lock(a):
        worker = threading.Thread(target=call)
        worker.start()
        assert not done.wait(0.5), "a polyviz call ran while the user held the model's lock"
        polyviz.explain(b, x, "saliency", target=0, progress=False)  # another model is not blocked
        polyviz.explain(a, x, "saliency", target=0, progress=False)  # re-entrant in this thread
        assert a.training
    worker.join(60)
    assert done.is_set()


def test_data_parallel_is_refused_not_silently_wrong():
    """nn.DataParallel runs its replicas in worker threads, where polyviz's thread-scoped hooks do
    not act: layer methods would see nothing. It is refused with a pointer to ``model.module``."""
    from polyviz.errors import CapabilityError

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(CapabilityError, match=r"DataParallel .*model\.module"):
        TorchBackend(nn.DataParallel(net))
