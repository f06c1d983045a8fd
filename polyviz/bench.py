"""``polyviz bench``: every method timed against its floor, measured in the same run.

The floor of a method is the cheapest set of backend passes its definition needs:

* ``forward + input backward`` for gradient methods (saliency, guided backprop, ...), times the
  number of points for path and noise methods (integrated gradients, SmoothGrad);
* ``forward + backward stopped at the layer`` for gradient CAMs; guided Grad-CAM adds a guided
  input backward (the protocol answers one objective and one rule per call, so two passes);
* ``forward + input backward from the layer`` for guided backprop of one layer's channel;
* the raw batched forward passes a perturbation method needs (occlusion windows, Score-CAM masks);
  for Ablation-CAM, one forward to the layer and one forward of the rest of the network per
  channel (the backend resumes at the layer).

The ratio method / floor says how much a method adds on top of the passes it cannot avoid. With
``--peers``, the same method in the peer libraries that are installed (Captum, pytorch-grad-cam,
tf-keras-vis: each backend offers its own through ``Backend.peer_benchmarks``) is timed in the
same run. Timing is wall-clock (``time.perf_counter``), median and min over ``repeat`` runs after
one warm-up run, taken round-robin (method, floor, peers, method, floor, peers, ...) so that all
of them see the same machine load; every backend call returns host numpy arrays, so device work is synchronised.
Peak memory is the rise of the process' resident memory during one extra run, sampled every 5 ms.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from polyviz.api import default_layer, explain
from polyviz.protocol import GUIDED, Backend, Boxes, ChannelMean, ClassScore, LRPRule
from polyviz.registry import backend_for

__all__ = ["BenchRow", "run_bench", "markdown", "DEFAULT_METHODS", "QUICK_METHODS"]

DEFAULT_METHODS = (
    "saliency", "input_x_gradient", "guided_backprop", "integrated_gradients", "smoothgrad",
    "gradcam", "gradcam_plus_plus", "layercam", "scorecam", "occlusion", "optimisation_step",
)
#: Options a benchmarked method runs with. LRP: zennit's ``EpsilonGammaBox`` assignment (z^B on the
#: first conv, gamma on the others, epsilon on the dense layers), so that zennit is a like-for-like peer.
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "lrp": {"rule": "composite", "bounds": (0.0, 1.0),
            "rules": {"first": "zbox", "conv2d": "gamma", "dense": LRPRule("epsilon", epsilon=1e-6)}},
}
#: Not an explain() method: one step of polyviz.class_model (Fourier image, transforms, Adam).
OPTIMISATION_STEP = "optimisation_step"
QUICK_METHODS = ("saliency", "gradcam", "occlusion")


@dataclass
class BenchRow:
    backend: str
    method: str
    median_s: float
    min_s: float
    floor: str
    floor_s: float
    ratio: float
    peak_mib: float = 0.0  # resident memory the method added at its peak (host RSS, sampled)
    peers: dict[str, float] = field(default_factory=dict)  # peer name -> median seconds

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _peak_rss_mib(fn: Callable[[], Any], interval: float = 0.005) -> float:
    """How far resident memory rose above its starting level while ``fn`` ran, in MiB."""
    start = _rss_bytes()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            done.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    return max(peak[0] - start, 0) / 2**20


def _time(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Median and min wall time of ``fn`` over ``repeat`` runs after one warm-up run."""
    return _time_together({"fn": fn}, repeat)["fn"]


def _time_together(fns: dict[str, Callable[[], Any]], repeat: int) -> dict[str, tuple[float, float]]:
    """Median and min wall time of each callable, measured round-robin.

    Each callable runs once as a warm-up (traces compiled functions, fills caches); then the
    ``repeat`` rounds run every callable once in turn, so a method, its floor and its peers see
    the same machine load and their ratios stay meaningful on a busy machine.
    """
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


def _occlusion_boxes(h: int, w: int, window: int, stride: int) -> Boxes:
    boxes = [
        (y, x, y + window, x + window)
        for y in range(0, max(h - window, 0) + 1, stride)
        for x in range(0, max(w - window, 0) + 1, stride)
    ]
    return Boxes(np.array(boxes))


def _floors(backend: Backend, x: np.ndarray, target: np.ndarray, layer: str, batch: int) -> dict[str, Callable[[], Any]]:
    """The passes methods cannot avoid, as callables."""
    objective = ClassScore(target.tolist())
    n_channels = backend.layer_info(layer).output_shape[-1]
    h, w = x.shape[1:3]
    window, stride = max(h // 7, 1), max(h // 14, 1)
    boxes = _occlusion_boxes(h, w, window, stride)
    occl_batch = np.repeat(x[:1], batch, axis=0)

    def raw_forwards(count: int) -> Callable[[], Any]:
        def run() -> None:
            for start in range(0, count, batch):
                backend.forward(occl_batch[: min(batch, count - start)])

        return run

    def n_input_backward(n: int) -> Callable[[], Any]:
        xs = np.repeat(x, min(n, batch), axis=0)
        t = ClassScore(np.repeat(target, min(n, batch)).tolist())

        def run() -> None:
            for start in range(0, n * len(x), len(xs)):
                backend.input_gradient(xs[: min(len(xs), n * len(x) - start)], ClassScore(t.target[: min(len(xs), n * len(x) - start)]))

        return run

    def guided_and_layer() -> None:
        backend.input_gradient(x, objective, GUIDED)
        backend.layer_gradients(x, [layer], objective)

    def layer_then_head(count: int) -> Callable[[], Any]:
        keep = np.ones((min(batch, count), n_channels), np.float32)

        def run() -> None:
            backend.layer_activations(x, [layer])
            for start in range(0, count, batch):
                rows = min(batch, count - start)
                backend.layer_masked_scores(x[:1], layer, keep[:rows], sample_index=np.zeros(rows, int),
                                            objective=ClassScore(np.repeat(target[:1], rows).tolist()))

        return run

    return {
        "forward": lambda: backend.forward(x),
        "forward+guided input backward, forward+layer backward": guided_and_layer,
        "forward+input backward from the layer": lambda: backend.input_gradient(x, ChannelMean(layer, 0), GUIDED),
        f"forward to the layer + {n_channels} head forwards (batched)": layer_then_head(n_channels),
        "forward+input backward": lambda: backend.input_gradient(x, objective),
        "forward+input backward of x and its reference": lambda: backend.input_gradient(
            np.concatenate([x, np.zeros_like(x)]), ClassScore(np.concatenate([target, target]).tolist())),
        "forward+layer backward": lambda: backend.layer_gradients(x, [layer], objective),
        "50 x forward+input backward (batched)": n_input_backward(50),
        "25 x forward+input backward (batched)": n_input_backward(25),
        f"{len(boxes) + 1} raw forwards (batched)": raw_forwards(len(boxes) + 1),
        f"{n_channels + 1} raw forwards (batched)": raw_forwards(n_channels + 1),
        "_occlusion": lambda: (window, stride),
    }


def _floor_for(method: str, floors: dict[str, Callable[[], Any]]) -> str:
    if method in ("saliency", "input_x_gradient", "guided_backprop", "deconvnet", "lrp", OPTIMISATION_STEP):
        return "forward+input backward"
    if method == "guided_gradcam":
        return "forward+guided input backward, forward+layer backward"
    if method == "deeplift":
        return "forward+input backward of x and its reference"
    if method == "layer_guided_backprop":
        return "forward+input backward from the layer"
    if method == "integrated_gradients":
        return "50 x forward+input backward (batched)"
    if method in ("smoothgrad", "gradient_shap"):
        return "25 x forward+input backward (batched)"
    if method == "occlusion":
        return next(k for k in floors if k.endswith("raw forwards (batched)"))
    if method == "scorecam":
        return [k for k in floors if k.endswith("raw forwards (batched)")][-1]
    if method == "ablationcam":
        return next(k for k in floors if k.endswith("head forwards (batched)"))
    if method in ("eigencam",):
        return "forward"
    return "forward+layer backward"


def run_bench(
    model: Any,
    x: np.ndarray,
    methods: tuple[str, ...] = DEFAULT_METHODS,
    *,
    repeat: int = 3,
    batch_size: int = 32,
    peers: bool = False,
    progress: bool = True,
    preprocess: Any = None,
) -> list[BenchRow]:
    """Time ``methods`` on ``model`` for the channels-last batch ``x``, each against its floor."""
    backend = backend_for(model, preprocess=preprocess)
    layout_x = x if backend.native_layout == "NHWC" else np.transpose(x, (0, 3, 1, 2))
    target = backend.forward(x).argmax(axis=1)
    layer = default_layer(backend)
    floors = _floors(backend, x, target, layer, batch_size)
    window, stride = floors.pop("_occlusion")()
    peer_fns = {}
    if peers and hasattr(backend, "peer_benchmarks"):  # optional: each backend offers its own peers
        peer_fns = backend.peer_benchmarks(model, layout_x, target, layer, batch_size)
    rows = []
    iterator = methods
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(methods, desc=f"bench {backend.name}", unit="method")
    for method in iterator:
        options: dict[str, Any] = dict(METHOD_OPTIONS.get(method, {}))
        if method == "occlusion":
            options = {"window": window, "stride": stride}

        def run(method: str = method, options: dict[str, Any] = options) -> Any:
            return explain(model, layout_x, method, target=target, layer=layer if method not in ("saliency",) else None,
                           batch_size=batch_size, progress=False, preprocess=preprocess, **options)

        if method == OPTIMISATION_STEP:
            from polyviz.optimisation.maximise import step_runner

            run = step_runner(backend, x, target)
        floor = _floor_for(method, floors)
        timed = {"method": run, "floor": floors[floor]}
        if peers:
            timed.update({f"peer:{name}": fn for name, fn in peer_fns.get(method, {}).items()})
        results = _time_together(timed, repeat)
        median, best = results["method"]
        peak = _peak_rss_mib(run)
        floor_s = results["floor"][0]
        peer_times = {key.removeprefix("peer:"): value[0] for key, value in results.items() if key.startswith("peer:")}
        rows.append(BenchRow(backend.name, method, median, best, floor, floor_s, median / floor_s,
                             peak, peer_times))
    return rows


def markdown(rows: list[BenchRow]) -> str:
    """A markdown table: method, time, floor, ratio, and each peer's time and speed-up."""
    lines = [
        "| backend | method | median s | min s | floor | floor s | ratio | peak MiB | peers (median s, polyviz speed-up) |",
        "|---|---|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        peer_text = "; ".join(f"{name} {t:.3f} s ({t / r.median_s:.1f}x)" for name, t in r.peers.items()) or "-"
        lines.append(
            f"| {r.backend} | {r.method} | {r.median_s:.3f} | {r.min_s:.3f} | {r.floor} | {r.floor_s:.3f} | "
            f"{r.ratio:.2f} | {r.peak_mib:.0f} | {peer_text} |"
        )
    return "\n".join(lines)


def to_json(rows: list[BenchRow], meta: dict[str, Any]) -> str:
    return json.dumps({"meta": meta, "rows": [r.as_dict() for r in rows]}, indent=2)
