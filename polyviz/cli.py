"""The ``polyviz`` command.

``polyviz demo``: every attribution method on demo images, in every installed framework, side by
side in an HTML gallery with a table of cross-framework agreement and pointing-game accuracy.
``polyviz explain``: explain your images with your model (PNG per image and method, top-5 classes).
``polyviz gallery``: the demo's page for your model and images. ``polyviz crosscheck``: convert a
model to the other framework, run every method in both, and judge each difference against the
float32 noise floor (agrees / at noise floor / DISAGREES, exit code 1). ``polyviz metrics``: every
method judged by every metric of :mod:`polyviz.metrics` in every framework. ``polyviz summary``,
``polyviz methods``, ``polyviz info``, ``polyviz bench``.

Errors (missing files, unreadable images, unknown models or methods, absent weights, an ``--out``
that is a file or cannot be created or written, an image over the pixel limit) are one line on
stderr and exit code 2, checked before any model work where possible; ``--debug`` shows the
traceback. Batches keep their good items: ``explain`` and ``gallery`` report an unreadable image
on one line (``polyviz: skipped: ...``), go on with the others and exit with code 1 (``--strict``:
stop at the first one, exit code 2); a gallery method that raises is shown as failed on the page,
which is always written (exit code 1). Exit codes: 0 done, 1 done with skipped images or failed
methods, 2 error, 130 interrupted. Output files are written atomically (:mod:`polyviz.render._atomic`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import polyviz
from polyviz.errors import InputError, PolyvizError, TargetError
from polyviz.registry import EXTRAS, available_backends

__all__ = ["main", "build_parser"]

#: Seed of the demo's images: not the training (0) or held-out evaluation (12345) seed.
DEMO_SEED = 7
FRAMEWORK_ORDER = {"torch": 0, "keras": 1}


def info_rows() -> list[tuple[str, str, str, str]]:
    """(backend, module, framework version or 'not installed (pip install ...)', capabilities)."""
    rows = []
    for name, cls in available_backends().items():
        try:
            version = cls.framework_version()
        except Exception as exc:  # a broken framework install must not break `polyviz info`
            version = None
            cls_error = f"error: {exc}"
        else:
            cls_error = ""
        if version is None:
            version = cls_error or f"not installed (pip install '{EXTRAS.get(name, 'polyviz[' + name + ']')}')"
        rows.append((name, cls.__module__, version, ", ".join(sorted(cls.capabilities))))
    return rows


def cmd_info(args: argparse.Namespace) -> int:
    print(f"polyviz {polyviz.__version__} (numpy {np.__version__}, python {sys.version.split()[0]})")
    rows = info_rows()
    if not rows:
        print("no backends installed: pip install 'polyviz[torch]' or 'polyviz[keras]'")
        return 1
    for name, module, version, caps in rows:
        print(f"\nbackend {name}  ({module})")
        print(f"  framework:    {version}")
        print(f"  capabilities: {caps}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from polyviz import bench, models
    from polyviz.render._atomic import write_text

    if args.json:
        _output_file(args.json)
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    # torch before keras: torchvision's triton must load before TensorFlow in one process
    backends.sort(key=lambda b: {"torch": 0, "keras": 1}.get(b, 2))
    methods = bench.QUICK_METHODS if args.quick else bench.DEFAULT_METHODS
    if args.methods:
        methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if args.model not in ("vgg16", "demo"):
        raise PolyvizError(f"--model: expected 'vgg16' or 'demo', got {args.model!r}")
    repeat = 1 if args.quick else args.repeat
    if args.metrics:
        return _bench_metrics(args, backends, repeat)
    if args.model == "demo":  # the shipped network at its own input size, on held-out demo images
        from polyviz.datasets import shapes

        if args.size not in (None, 64):
            raise PolyvizError(f"--size: the demo model takes 64-pixel images, got {args.size}")
        size = 64
        x = shapes(args.batch, seed=7).images
    else:
        size = 64 if args.quick and args.size is None else (args.size or 224)
        x = np.random.default_rng(0).random((args.batch, size, size, 3)).astype(np.float32)
    rows = []
    for name in backends:
        if args.model == "demo":
            model = models.demo(name)
        else:
            model = models.vgg16(name, seed=0) if size == 224 else _small_vgg(name, (size, size, 3))
        rows += bench.run_bench(model, x, methods, repeat=repeat, batch_size=args.batch_size, peers=args.peers,
                                progress=not args.no_progress)
    print(bench.markdown(rows))
    if args.json:
        import platform

        meta = {"machine": platform.machine(), "processor": platform.processor(), "model": args.model, "size": size,
                "batch": args.batch,
                "repeat": repeat, "polyviz": polyviz.__version__}
        write_text(args.json, bench.to_json(rows, meta))
    return 0


def _bench_metrics(args: argparse.Namespace, backends: list[str], repeat: int) -> int:
    """``polyviz bench --metrics``: metric rows against Quantus (see :mod:`polyviz.bench_metrics`)."""
    from polyviz import bench_metrics
    from polyviz.models.spec import random_weights
    from polyviz.registry import backend_class
    from polyviz.render._atomic import write_text

    names = None if args.metrics == "all" else tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    unknown = sorted(set(names or ()) - set(bench_metrics.SETTINGS))
    if unknown:
        raise PolyvizError(f"--metrics: expected 'all' or some of {', '.join(bench_metrics.SETTINGS)}, got {unknown}")
    size = args.size or 32
    spec = bench_metrics.bench_spec(size)
    x = np.random.default_rng(0).random((args.metric_images, size, size, 1)).astype(np.float32)
    rows = []
    for name in backends:
        model, _ = backend_class(name).build(spec, random_weights(spec, 0))
        if name == "torch":
            model = model.eval()
        rows += bench_metrics.run_metric_bench(model, x, names, repeat=repeat, peers=True,
                                               progress=not args.no_progress)
    print(bench_metrics.metric_markdown(rows))
    if args.json:
        import json
        import platform

        meta = {"machine": platform.machine(), "processor": platform.processor(), "size": size,
                "images": args.metric_images, "repeat": repeat, "settings": bench_metrics.SETTINGS}
        write_text(args.json, json.dumps({"meta": meta, "rows": [r.as_dict() for r in rows]}, indent=2, default=list))
    return 0


def _small_vgg(backend: str, input_shape: tuple[int, int, int]) -> object:
    """VGG16's layer pattern at another input size (a 512-unit head), seeded: for quick runs."""
    from polyviz.models.spec import VGG_CONFIGS, random_weights, vgg_spec
    from polyviz.registry import backend_class

    spec = vgg_spec(VGG_CONFIGS["vgg16"], input_shape=input_shape, dense=(512, 512), classes=1000)
    model, _ = backend_class(backend).build(spec, random_weights(spec, 0))
    return model


# ---- shared helpers ---------------------------------------------------------------------------
def _backends(text: str | None) -> list[str]:
    """Comma-separated backend names (default: every installed framework), torch first: torch must
    load before TensorFlow in one process."""
    from polyviz.registry import backend_class

    if text:
        names = list(dict.fromkeys(b.strip() for b in text.split(",") if b.strip()))
        if not names:
            raise InputError("backend: expected comma-separated backend names such as torch,keras")
        for name in names:
            if backend_class(name).framework_version() is None:
                raise InputError(f"backend: the {name} framework is not installed (pip install '{EXTRAS.get(name, name)}')")
    else:
        names = []
        for name, cls in available_backends().items():
            try:
                if cls.framework_version() is not None:
                    names.append(name)
            except Exception:  # noqa: S112 - a broken framework is left out
                continue
        if not names:
            raise InputError("backend: no framework installed; pip install 'polyviz[torch]' or 'polyviz[keras]'")
    return sorted(names, key=lambda b: FRAMEWORK_ORDER.get(b, 2))


def _say(args: argparse.Namespace, text: str) -> None:
    print(text, flush=True)


def _target(text: str | None) -> int | None:
    if text is None or text.lower() in ("top1", "top-1", "pred", "predicted"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise TargetError(f"--target: expected a class index or 'top1', got {text!r}") from None
    if value < 0:
        raise TargetError(f"--target: expected a class index >= 0, got {value}")
    return value


def _check_target(target: int | None, n_classes: int) -> None:
    if target is not None and target >= n_classes:
        raise TargetError(f"--target: the model has {n_classes} classes (0..{n_classes - 1}), got {target}")


def _models_in(lm: Any, backends: list[str], args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """The model of ``lm`` in every backend: built from its spec, loaded by name, or converted from
    the file's framework. Returns ({backend: model}, {backend: preprocess}, {backend: layer names})."""
    from polyviz.loading import load_model
    from polyviz.models import convert
    from polyviz.registry import backend_class

    models, pre, names = {}, {}, {}
    for b in backends:
        if b == lm.backend:
            models[b], pre[b], names[b] = lm.model, lm.preprocess, dict(lm.layer_names)
        elif lm.source is not None:
            spec, weights = lm.source
            models[b], names[b] = backend_class(b).build(spec, weights)
            pre[b] = lm.preprocess
        elif lm.name in ("vgg16", "vgg19"):
            other = load_model(lm.name, b, args.weights if getattr(args, "weights", None) else None, size=args.size)
            models[b], pre[b], names[b] = other.model, _with_preprocess(other, args).preprocess, {}
        else:
            converted = convert(lm.model, b, input_shape=(*lm.size, 3))
            models[b], pre[b], names[b] = converted.model, lm.preprocess, dict(converted.layer_map)
    return models, pre, names


def _layers_for(layer: str | None, names: dict[str, dict[str, str]]) -> dict[str, str | None]:
    """--layer in each framework: a canonical (spec or source) name is translated per framework."""
    if layer is None:
        return {}
    return {b: table.get(layer, layer) for b, table in names.items()}


def _methods_text(args: argparse.Namespace) -> str | None:
    return getattr(args, "methods", None) or None


def _render_style(args: argparse.Namespace) -> dict[str, Any]:
    return {"style": getattr(args, "style", "overlay") or "overlay"}


def _output_folder(text: str, flag: str = "--out") -> Path:
    """The output folder ``text``, proved writable before any model work without creating it yet
    (a refused run leaves nothing behind): an existing file, a folder that cannot be created (a
    file in the way) or cannot be written is a one-line error. The proof creates and removes a
    temporary file in the folder, or in its nearest existing ancestor when the folder does not
    exist yet (which works for root too, where permission bits say nothing). A folder that is a
    symbolic link is followed (it is the folder the user named); files inside it are written
    atomically and never through links (:mod:`polyviz.render._atomic`), which also creates it."""
    import os
    import tempfile

    out = Path(text)
    if out.exists() and not out.is_dir():
        raise InputError(f"{flag}: {text!r} exists and is not a folder; give a folder name")
    if out.is_symlink() and not out.exists():
        raise InputError(f"{flag}: {text!r} is a symbolic link to a missing folder")
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{flag}: cannot create the folder {text!r}: {str(existing)!r} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".polyviz-write-test.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        if existing == out.absolute():
            raise InputError(f"{flag}: cannot write in the folder {text!r} ({why})") from None
        raise InputError(f"{flag}: cannot create the folder {text!r}: {str(existing)!r} is not writable ({why})") from None
    return out


def _output_file(text: str, flag: str = "--json") -> Path:
    """The output file ``text``: not a folder, its folder created and writable (see
    :func:`_output_folder`); checked before any work, written atomically at the end."""
    path = Path(text)
    if path.is_dir():
        raise InputError(f"{flag}: {text!r} is a folder; give a file name such as 'out.json'")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"{flag}: cannot write {text!r}: {str(parent)!r} is not a folder")
    _output_folder(str(parent), flag)
    return path


def _skipped(error: Exception, write: Any = None) -> None:
    """One line on stderr for an input left out of a batch."""
    line = f"polyviz: skipped: {error}"
    if write is not None:
        write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


def _readable(files: list[Path], strict: bool) -> tuple[list[Path], list[Exception]]:
    """``files`` whose headers PIL reads and whose size is within the pixel limit, checked before a
    model loads. With ``strict`` the first bad file is the command's error (exit code 2); else each
    is reported on one line and left out; when no file is left, that is the error."""
    from polyviz.loading import check_image_headers

    good, errors = [], []
    for f in files:
        found = check_image_headers([f])
        if found and (strict or len(files) == 1):
            raise found[0]
        errors += found
        if found:
            _skipped(found[0])
        else:
            good.append(f)
    if not good:
        raise InputError(f"images: none of the {len(files)} images can be read (listed above)")
    return good, list(errors)


# ---- polyviz demo -----------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from polyviz import compare
    from polyviz.datasets import shapes
    from polyviz.loading import load_model
    from polyviz.render import figure, save_png, write_gallery

    t0 = getattr(args, "started", time.perf_counter())
    backends = _backends(args.backend)
    methods = compare.parse_methods(_methods_text(args))
    if args.images < 1:
        raise InputError(f"--images: expected a positive number of images, got {args.images}")
    out = _output_folder(args.out)
    data = shapes(args.images, seed=args.seed)
    _say(args, f"polyviz demo: {len(methods)} methods x {args.images} shapes images (seed {args.seed}) in "
               f"{', '.join(backends)}")
    loaded = {b: load_model("demo", b, args.weights) for b in backends}
    models = {b: lm.model for b, lm in loaded.items()}
    runs = compare.run_methods(models, data.images, methods, options=compare.FAST_OPTIONS,
                               batch_size=args.batch_size, progress=not args.no_progress)
    rows = compare.summary_rows(runs, methods, backends, data.masks)
    names = list(loaded[backends[0]].class_names or [])
    columns = [f"{i + 1}: {names[label] if label < len(names) else label}" for i, label in enumerate(data.labels)]
    predicted = {}
    for b in backends:
        done = next((r.explanation for (m, bb), r in runs.items() if bb == b and r.explanation is not None), None)
        if done is not None:
            predicted[b] = done.target
    acc = ", ".join(f"{b} {int((p == data.labels).sum())}/{len(data.labels)}" for b, p in predicted.items())
    table = compare.text_table(rows, backends, args.images)
    notes = (
        "Every attribution method of polyviz on held-out images of the synthetic shapes set "
        f"(polyviz.datasets.shapes, seed {args.seed}), explained for the class each model predicts, with the trained "
        "demo network (polyviz.models.demo) built in each framework from the same weights file. "
        f"Model accuracy on these images: {acc or 'n/a'}.\n\n"
        "Agreement: relative L2 distance ||a - b|| / max(||a||, ||b||) between the raw attributions of the two "
        f"frameworks, over all images and per image (images < {compare.SAME:g}). CAM-type maps agree to float32 "
        "round-off. Input gradients of a ReLU/max-pool network can differ on a few images: where two values tie "
        "or a pre-activation is within round-off of zero, the frameworks may take different (equally valid) "
        "branches, which moves the gradient of that image by up to about 1e-2.\n\n"
        "Pointing game: a hit when the largest |attribution| (summed over colour channels) lies inside the "
        "object's mask.\n\n"
        "Options: "
        + "; ".join(f"{m}: {', '.join(f'{k}={v}' for k, v in o.items())}" for m, o in compare.FAST_OPTIONS.items()
                    if m in methods)
        + " (sized for 64-pixel images). Everything else uses the methods' defaults."
    )
    page = write_gallery(out, title="polyviz demo: every method, every framework", columns=columns,
                         rows=compare.gallery_rows(runs, methods, backends, args.images, data.images, data.masks),
                         subcolumns=backends, table_html=compare.html_table(rows, backends, args.images), notes=notes)
    for b in backends:
        panels = [[runs[(m, b)].explanation.render(i) if runs[(m, b)].explanation is not None else None
                   for i in range(args.images)] for m in methods]
        panels.insert(0, [(data.images[i] * 255).round().astype(np.uint8) for i in range(args.images)])
        save_png(figure(panels, row_titles=["input", *methods], col_titles=columns, scale=2), out / f"figure_{b}.png")
    print(table)
    print(f"model accuracy on these images: {acc}")
    print(f"gallery: {page}  (figures: {', '.join(str(out / f'figure_{b}.png') for b in backends)})")
    print(f"done in {time.perf_counter() - t0:.1f} s (frameworks loaded, models built, every method run, pages written)")
    return 0


# ---- polyviz explain ----------------------------------------------------------------------------
def _load_user_model(args: argparse.Namespace, backend: str | None = None) -> Any:
    from polyviz.loading import load_model

    return _with_preprocess(load_model(args.model, backend if backend is not None else args.backend, args.weights,
                                       size=args.size, **_file_options(args)), args)


def _with_preprocess(lm: Any, args: argparse.Namespace) -> Any:
    """``--preprocess``, when given, replaces the loaded model's preprocessing (images are in [0, 1])."""
    preset = getattr(args, "preprocess", None)
    if preset is not None:
        from polyviz.preprocess import Preprocess

        lm.preprocess = Preprocess.named(preset, input_range=1.0)
    return lm


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _top5_lines(probs: np.ndarray, names: list[str] | None) -> list[str]:
    order = np.argsort(-probs)[:5]
    return [f"  {k + 1}. {probs[c]:6.1%}  {names[c] if names and c < len(names) else 'class'} ({int(c)})"
            for k, c in enumerate(order)]


def _unique_stems(files: list[Path]) -> list[str]:
    stems = [f.stem for f in files]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{i:03d}_{s}" for i, s in enumerate(stems)]


def _resolve_layer(lm: Any, be: Any, layer: str | None) -> str | None:
    """--layer by its native name or, for models built from a spec (demo, seeded VGG), by the spec's
    name in any framework (block5_conv3 is features.N in torch)."""
    from polyviz.errors import LayerError, did_you_mean

    if layer is None:
        return None
    if layer in lm.layer_names:
        return lm.layer_names[layer]
    native = be.layer_names()
    if layer not in native:
        raise LayerError(f"--layer: no layer {layer!r} in this {lm.backend} model.{did_you_mean(layer, [*lm.layer_names, *native])} "
                         f"`polyviz summary {lm.name} --backend {lm.backend}` lists them.")
    return layer


def _output_key(text: str | None) -> str | int | None:
    """--output: a dict key or attribute name, or a tuple index (digits)."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        raise InputError("--output: expected an output key or index, got an empty string")
    return int(text) if text.isdigit() else text


def cmd_explain(args: argparse.Namespace) -> int:
    """Explain image files and folders, streamed ``--batch`` images at a time (memory holds one
    batch, whatever the number of images). An unreadable image is reported on one line and left
    out, the others are written, and the exit code is 1; with ``--strict`` it stops there (exit 2)."""
    from polyviz.api import explain, predict
    from polyviz.compare import parse_methods
    from polyviz.loading import _background, image_files, iter_image_batches, max_image_pixels
    from polyviz.registry import backend_for
    from polyviz.targets import SelectOutput

    methods = parse_methods(args.method)
    target = _target(args.target)
    if args.backend is not None:
        _backends(args.backend)
    if args.batch < 1:
        raise InputError(f"--batch: expected a positive number of images, got {args.batch}")
    _background(args.background)
    max_image_pixels()
    files = image_files(args.images)  # missing files fail before a model is loaded
    out = _output_folder(args.out)
    good, header_errors = _readable(files, args.strict)
    lm = _load_user_model(args)
    output = _output_key(args.output)
    be = backend_for(lm.model, preprocess=lm.preprocess, **({} if output is None else {"output": SelectOutput(output)}))
    layer = _resolve_layer(lm, be, args.layer)
    bad = {e.path for e in header_errors}
    stems = [stem for f, stem in zip(files, _unique_stems(files)) if f not in bad]  # aligned with good
    print(f"model {lm.name} ({lm.backend}), {len(good)} images at {lm.size[0]}x{lm.size[1]}, methods: {', '.join(methods)}", flush=True)
    bar, say, write = None, print, None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(good), desc="images", unit="image")
        say = write = tqdm.write  # lines above the bar, not through it
    written, skipped = 0, len(header_errors)
    try:
        for batch in iter_image_batches(good, lm.size, args.batch, skip_errors=not args.strict,
                                        background=args.background):
            for error in batch.errors:
                _skipped(error, write)
            skipped += len(batch.errors)
            if batch.files:
                xb = batch.images
                logits = predict(be, xb)
                _check_target(target, logits.shape[-1])
                for f, row in zip(batch.files, _softmax(logits.astype(np.float64))):
                    say(f"{f}:\n" + "\n".join(_top5_lines(row, lm.class_names)))
                for m in methods:
                    e = explain(lm.model, xb, m, target=target, layer=layer, preprocess=lm.preprocess, layout="NHWC",
                                progress=False, output=output)
                    for i, k in enumerate(batch.indices):
                        e.save(out / f"{stems[k]}_{m}.png", index=i, **_render_style(args))
                        written += 1
            if bar is not None:
                bar.update(len(batch.files) + len(batch.errors))
    finally:
        if bar is not None:
            bar.close()
    print(f"wrote {written} PNG files to {out}")
    if skipped:
        print(f"polyviz: {skipped} of {len(files)} images skipped (unreadable, listed above); the other "
              f"{len(files) - skipped} were explained", file=sys.stderr)
        return 1
    return 0


# ---- polyviz gallery ----------------------------------------------------------------------------
def _check_layers(layers: dict[str, str | None], models: dict[str, Any], pre: dict[str, Any], names: dict) -> None:
    """--layer exists in every framework's model (by its native or canonical name)."""
    from polyviz.errors import LayerError, did_you_mean
    from polyviz.registry import backend_for

    for b, layer in layers.items():
        if layer is None:
            continue
        native = backend_for(models[b], preprocess=pre.get(b)).layer_names()
        if layer not in native:
            raise LayerError(f"--layer: no layer {layer!r} in the {b} model.{did_you_mean(layer, [*names.get(b, {}), *native])}")


def cmd_gallery(args: argparse.Namespace) -> int:
    """The demo's page for the user's model and images. Arguments (methods, target, layer, images,
    --out) are checked before any method runs; a method that fails is shown as failed on the page,
    which is always written (exit code 1 when a method failed or an image was skipped)."""
    from polyviz import compare
    from polyviz.api import predict
    from polyviz.loading import _background, image_files, iter_image_batches, max_image_pixels
    from polyviz.registry import backend_for
    from polyviz.render import write_gallery

    methods = compare.parse_methods(_methods_text(args))
    target = _target(args.target)
    backends = _backends(args.backend) if args.backend else None
    _background(args.background)
    max_image_pixels()
    files = image_files(args.images)  # missing files fail before a model is loaded
    out = _output_folder(args.out)
    good, header_errors = _readable(files, args.strict)
    lm = _load_user_model(args, backends[0] if backends and args.model.lower() in ("demo", "vgg16", "vgg19") else None)
    backends = backends or [lm.backend]
    if lm.backend not in backends:
        backends = sorted({lm.backend, *backends}, key=lambda b: FRAMEWORK_ORDER.get(b, 2))
    # the page shows every image, so they are all held; read in batches, unreadable ones left out
    kept, parts, skipped = [], [], len(header_errors)
    for batch in iter_image_batches(good, lm.size, 16, skip_errors=not args.strict, background=args.background):
        for error in batch.errors:
            _skipped(error)
        skipped += len(batch.errors)
        kept += batch.files
        parts.append(batch.images)
    if not kept:
        raise InputError(f"images: none of the {len(files)} images can be read (listed above)")
    x = np.concatenate(parts)
    be = backend_for(lm.model, preprocess=lm.preprocess)
    _check_target(target, predict(be, x[:1]).shape[-1])  # one forward pass, before any method
    _resolve_layer(lm, be, args.layer)
    models, pre, names = _models_in(lm, backends, args)
    layers = _layers_for(args.layer, names)
    _check_layers(layers, models, pre, names)
    runs = compare.run_methods(models, x, methods, target=target, layers=layers,
                               preprocess=pre, batch_size=args.batch_size, progress=not args.no_progress)
    rows = compare.summary_rows(runs, methods, backends)
    columns = [f.name for f in kept]
    page = write_gallery(out, title=f"polyviz gallery: {lm.name}", columns=columns,
                         rows=compare.gallery_rows(runs, methods, backends, len(kept), x, style=_render_style(args)),
                         subcolumns=backends if len(backends) > 1 else None,
                         table_html=compare.html_table(rows, backends),
                         notes=f"Model {lm.name}; images resized to {lm.size[0]}x{lm.size[1]}.")
    print(compare.text_table(rows, backends))
    print(f"gallery: {page}")
    failed = [f"{r.method} ({r.backend})" for r in runs.values() if r.failed]
    if failed:
        print(f"polyviz: {len(failed)} method runs failed (shown as failed on the page): {', '.join(failed)}",
              file=sys.stderr)
    if skipped:
        print(f"polyviz: {skipped} of {len(files)} images skipped (unreadable, listed above)", file=sys.stderr)
    return 1 if failed or skipped else 0


# ---- polyviz crosscheck -------------------------------------------------------------------------
def _shared_default_layer(be: Any, layer_map: dict[str, str], size: tuple[int, int]) -> str:
    """The last layer with a spatial map (larger than 1x1) that the converted model also has."""
    from polyviz.api import CONTAINER_TYPES, default_layer

    be.check_x(np.zeros((1, *size, 3), np.float32))  # shapes at the size the images will have
    spatial = [i.name for i in be.layers() if i.spatial and i.type not in CONTAINER_TYPES and i.name in layer_map
               and tuple(i.output_shape[:2]) != (1, 1)]
    return spatial[-1] if spatial else default_layer(be)


def cmd_crosscheck(args: argparse.Namespace) -> int:
    from polyviz import compare
    from polyviz.loading import load_model
    from polyviz.models import convert
    from polyviz.registry import backend_for

    backends = _backends(None)
    if len(backends) < 2:
        raise InputError(f"crosscheck: needs two frameworks, only {', '.join(backends)} is installed")
    methods = compare.parse_methods(_methods_text(args))
    key = args.model.lower()
    source = args.backend or ("keras" if args.weights and str(args.weights).lower().endswith((".h5", ".keras")) else None)
    graphs = {"resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "densenet121"}
    if key in graphs and args.weights is None:  # seeded random weights and BatchNorm statistics
        from polyviz.loading import LoadedModel
        from polyviz.registry import backend_class

        b = source or "torch"
        px = int(args.size)
        model = backend_class(b).seeded_model(key, seed=args.seed, input_shape=(px, px, 3))
        lm = _with_preprocess(LoadedModel(model, b, key, (px, px), None, None), args)
        what = f"{key} ({b}) with seeded random weights and BatchNorm statistics (seed {args.seed}) at {px}x{px}"
    elif key in ("vgg16", "vgg19") and args.weights is None:
        lm = _with_preprocess(load_model(key, source or "torch", None, size=args.size, seed=args.seed), args)
        what = f"{key} with seeded random weights (seed {args.seed}) at {args.size}x{args.size}"
    else:
        lm = _with_preprocess(load_model(args.model, source, args.weights, size=args.size, **_file_options(args)), args)
        what = f"{lm.name} at {lm.size[0]}x{lm.size[1]}"
    other = next(b for b in backends if b != lm.backend)
    converted = convert(lm.model, other, input_shape=(*lm.size, 3))
    models = {lm.backend: lm.model, other: converted.model}
    models = dict(sorted(models.items(), key=lambda kv: FRAMEWORK_ORDER.get(kv[0], 2)))
    order = list(models)
    layer = args.layer or _shared_default_layer(backend_for(lm.model, preprocess=lm.preprocess), converted.layer_map,
                                                lm.size)
    layers = {lm.backend: layer, other: converted.layer_map.get(layer)}
    if layers[other] is None:
        raise InputError(f"--layer: {layer!r} has no counterpart in the converted {other} model; choose one of "
                         f"{', '.join(list(converted.layer_map)[:12])}")
    h, w = lm.size
    x = np.random.default_rng(args.seed).random((args.images, h, w, 3)).astype(np.float32)
    print(f"crosscheck: {what}, converted {lm.backend} -> {other}; CAM layer {layers[order[0]]} / {layers[order[1]]}; "
          f"{args.images} random images; noise floor: each framework in float32 against its float64 copy")
    rows = compare.crosscheck(lm.model, x, methods, converted=converted, layer=layer, preprocess=lm.preprocess,
                              agrees=args.tolerance, batch_size=args.batch_size,
                              progress=not args.no_progress)
    print(compare.crosscheck_table(rows, [lm.backend, other]))
    bad = [r["method"] for r in rows if r["verdict"] == "DISAGREES"]
    if bad:
        print(f"DISAGREES (beyond {args.tolerance:g} and {compare.NOISE_MULTIPLE:g}x the float32 noise floor): "
              f"{', '.join(bad)}")
        return 1
    print(f"every method agrees (<= {args.tolerance:g}) or is at its float32 noise floor "
          f"(<= {compare.NOISE_MULTIPLE:g}x)")
    return 0


# ---- polyviz metrics ----------------------------------------------------------------------------
def cmd_metrics(args: argparse.Namespace) -> int:
    from polyviz import compare
    from polyviz.datasets import shapes
    from polyviz.loading import load_model
    from polyviz.metrics import report
    from polyviz.render._atomic import write_text

    t0 = getattr(args, "started", time.perf_counter())
    if args.json:
        _output_file(args.json)
    if args.figure:
        _output_file(args.figure, "--figure")
    if args.out:
        _output_folder(args.out, "--out")
    if args.model != "demo":
        raise InputError(f"--model: polyviz metrics judges the demo model on images with object masks; expected "
                         f"'demo', got {args.model!r}")
    for flag in ("images", "step", "infidelity_samples", "sensitivity_samples"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')}: expected a positive number, got {getattr(args, flag)}")
    backends = _backends(args.backend)
    methods, left_out = report.judged_methods(compare.parse_methods(_methods_text(args)))
    if not methods:
        raise InputError(f"--methods: {', '.join(left_out)} explain a neuron, not the class; choose other methods")
    chosen = None if not args.metrics else tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    settings = report.Settings(step=args.step, infidelity_samples=args.infidelity_samples,
                               sensitivity_samples=args.sensitivity_samples, batch_size=args.batch_size,
                               pointing_tolerance=args.pointing_tolerance, metrics=chosen)
    report.chosen_metrics(settings)  # unknown metric names fail before any work
    data = shapes(args.images, seed=args.seed)
    models = {b: load_model("demo", b, args.weights).model for b in backends}
    names = report.chosen_metrics(settings)
    print(f"polyviz metrics: {len(methods)} methods x {len(names)} metrics x {args.images} held-out shapes images "
          f"(seed {args.seed}) in {', '.join(backends)}; the demo model (polyviz.models.demo)", flush=True)
    for line in settings.lines(args.images, int(data.images.shape[1])):
        print(f"  {line}")
    cheap = [f"{m}: {', '.join(f'{k}={v}' for k, v in report.method_options(m, settings).items())}"
             for m in report.CHEAP_OPTIONS if m in methods]
    if cheap:
        print(f"  cheap settings: {'; '.join(cheap)}; every other method with its defaults")
    if left_out:
        print(f"  left out (they explain a neuron, not the class): {', '.join(left_out)}")
    runs = report.run_report(models, data.images, data.labels, data.masks, methods, settings,
                             progress=not args.no_progress)
    print()
    print(report.markdown(runs, methods, backends))
    if args.json:
        meta = {"images": args.images, "image_seed": args.seed, "backends": backends, "methods": methods,
                "polyviz": polyviz.__version__}
        write_text(args.json, report.to_json(runs, settings, meta))
        print(f"per-image values: {args.json}")
    if args.figure:
        report.figure(runs).savefig(args.figure, dpi=110)
        print(f"picture by category: {args.figure}")
    if args.out:
        page = report.write_report_gallery(args.out, runs, methods, backends,
                                           notes="\n".join(settings.lines(args.images, int(data.images.shape[1]))))
        print(f"gallery: {page}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


# ---- polyviz summary / methods ----------------------------------------------------------------
def cmd_summary(args: argparse.Namespace) -> int:
    from polyviz.inspect import summary
    from polyviz.loading import load_model

    if args.model.lower() in ("vgg16", "vgg19") and args.weights is None:
        # the architecture needs no ImageNet download: seeded weights, same layers and counts
        lm = load_model(args.model.lower(), args.backend, None, size=args.size, seed=0)
    else:
        lm = _load_user_model(args)
    h, w = lm.size
    summary(lm.model, input_shape=(h, w, 3), print_table=True)
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from polyviz.api import methods

    rows = [(name, info["family"], info["kind"], "yes" if info["needs_layer"] else "", ", ".join(info["capabilities"]),
             info["description"]) for name, info in methods().items()]
    head = ("method", "family", "returns", "layer", "needs", "description")
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(5)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)) + "  " + head[5])
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[5])
    return 0


def _file_options(args: argparse.Namespace) -> dict[str, Any]:
    """--arch and --trust-pickle as load_model's arguments."""
    return {"arch": getattr(args, "arch", None), "trust_pickle": bool(getattr(args, "trust_pickle", False))}


def _trust_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default=None,
                   help="the torchvision model name (resnet50) that a weights file given as the model "
                        "(.safetensors or a .pt/.pth state dict) is for")
    p.add_argument("--trust-pickle", action="store_true",
                   help="also load model files that can run code when loaded (a torch.save(model) pickle, a "
                        "torch.export .pt2); only for files from a source you trust (default: refused, nothing runs)")


def _model_options(p: argparse.ArgumentParser, default: str | None = "demo", size_default: int | None = None) -> None:
    p.add_argument("--model", default=default, required=default is None,
                   help="demo, vgg16, vgg19, a saved model (.keras, .h5, TorchScript .pt/.ts, a .safetensors or "
                        "state-dict file with --arch, a pickled module or .pt2 with --trust-pickle) or a "
                        "torchvision model name (default: %(default)s)")
    p.add_argument("--weights", default=None, help="weights file (vgg16/vgg19 and torchvision names: a torch state dict or .safetensors, or Keras .h5; "
                                                 "demo: a .npz; default: ImageNet from the local cache / the shipped demo weights)")
    p.add_argument("--size", type=int, default=size_default,
                   help="input size in pixels for models that do not fix one (default 224)")
    _trust_options(p)


def _input_options(p: argparse.ArgumentParser, preprocess: bool = True) -> None:
    """``--input-size`` (another name of ``--size``) and ``--preprocess``, for saved models."""
    if preprocess:
        from polyviz.preprocess import PRESETS

        p.add_argument("--preprocess", default=None, choices=PRESETS,
                       help="how images (read in [0, 1]) become the model's input: torchvision (ImageNet mean/std), "
                            "caffe (BGR, 0..255, ImageNet mean subtracted), tf ([-1, 1]), raw (0..255: Keras "
                            "EfficientNet and ConvNeXt normalise inside the model), none ([0, 1] as is). Default: "
                            "the built-in and torchvision models' own, none for model files")
    p.add_argument("--input-size", dest="size", type=int, default=argparse.SUPPRESS,
                   help="the same as --size")


def _image_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strict", action="store_true",
                   help="stop at the first unreadable image (exit code 2); by default it is reported, left out, "
                        "the others are written, and the exit code is 1")
    p.add_argument("--background", default="white",
                   help="colour that transparent pixels (RGBA, LA, palette transparency) are composited onto: "
                        "white, black, gray or #rrggbb (default white)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polyviz", description="See what a convolutional network sees.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    common = argparse.ArgumentParser(add_help=False)  # --debug after the command name works too
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", parents=[common], help="every method on demo images in every framework: HTML gallery and table")
    demo.add_argument("--out", default="polyviz-demo", help="output folder (default ./polyviz-demo)")
    demo.add_argument("--backend", default=None, help="comma-separated backends (default: every installed one)")
    demo.add_argument("--images", type=int, default=6, help="number of demo images (default 6)")
    demo.add_argument("--methods", default=None, help="comma-separated methods (default: all)")
    demo.add_argument("--seed", type=int, default=DEMO_SEED, help=f"seed of the demo images (default {DEMO_SEED})")
    demo.add_argument("--weights", default=None, help="demo weights .npz (default: the file shipped with polyviz)")
    demo.add_argument("--batch-size", type=int, default=None, help="passes per backend call inside a method")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)

    ex = sub.add_parser("explain", parents=[common], help="explain images with a model: PNG per image and method, top-5 classes")
    ex.add_argument("images", nargs="+", help="image files and folders")
    _model_options(ex)
    _input_options(ex)
    ex.add_argument("--backend", default=None, help="torch or keras (default: the file's framework, else torch)")
    ex.add_argument("--method", default="gradcam", help="method name(s), comma-separated, or 'all' (default gradcam)")
    ex.add_argument("--target", default="top1", help="class index to explain, or top1 (default: the predicted class)")
    ex.add_argument("--layer", default=None, help="layer for CAM methods (default: the last spatial layer)")
    ex.add_argument("--output", default=None,
                    help="for a model returning a dict, tuple or dataclass: the key, index or attribute of the "
                         "class scores to explain")
    ex.add_argument("--out", default="polyviz-out", help="output folder (default ./polyviz-out)")
    ex.add_argument("--style", default="overlay", help="picture style: overlay, heatmap, masked, gradient... (default overlay)")
    ex.add_argument("--batch", type=int, default=8,
                    help="images read and explained at a time; memory holds one batch (default 8)")
    _image_options(ex)
    ex.add_argument("--no-progress", action="store_true", help="no progress bars")
    ex.set_defaults(func=cmd_explain)

    ga = sub.add_parser("gallery", parents=[common], help="the demo's page for your model and images")
    ga.add_argument("images", nargs="+", help="image files and folders")
    _model_options(ga)
    _input_options(ga)
    ga.add_argument("--backend", default=None, help="comma-separated backends; a model is converted to the others")
    ga.add_argument("--methods", default=None, help="comma-separated methods (default: all)")
    ga.add_argument("--target", default="top1", help="class index, or top1 (default)")
    ga.add_argument("--layer", default=None, help="layer for CAM methods (default: the last spatial layer)")
    ga.add_argument("--out", default="polyviz-gallery", help="output folder (default ./polyviz-gallery)")
    ga.add_argument("--style", default="overlay", help="picture style (default overlay)")
    ga.add_argument("--batch-size", type=int, default=None, help="passes per backend call inside a method")
    _image_options(ga)
    ga.add_argument("--no-progress", action="store_true", help="no progress bars")
    ga.set_defaults(func=cmd_gallery)

    cc = sub.add_parser("crosscheck", parents=[common], help="convert a model to the other framework, run every method in both, compare")
    _model_options(cc, default="vgg16", size_default=32)
    _input_options(cc)
    cc.add_argument("--backend", default=None, help="the source framework (default: the file's, else torch)")
    cc.add_argument("--methods", default=None, help="comma-separated methods (default: all)")
    cc.add_argument("--layer", default=None, help="CAM layer in the source model (default: the last spatial layer)")
    cc.add_argument("--images", type=int, default=2, help="random images (default 2)")
    cc.add_argument("--seed", type=int, default=0, help="seed of the random weights and images (default 0)")
    cc.add_argument("--tolerance", type=float, default=1e-3,
                    help="relative L2 difference under which a method agrees outright (default 1e-3); beyond it, "
                         "within 3x the float32 noise floor is 'at noise floor', else DISAGREES (exit 1)")
    cc.add_argument("--batch-size", type=int, default=None, help="passes per backend call inside a method")
    cc.add_argument("--no-progress", action="store_true", help="no progress bars")
    cc.set_defaults(func=cmd_crosscheck)

    sm = sub.add_parser("summary", parents=[common], help="the layer table of a model (name, type, output shape, parameters)")
    sm.add_argument("model", help="demo, vgg16, vgg19, a model file or a torchvision name")
    sm.add_argument("--backend", default=None, help="torch or keras")
    sm.add_argument("--weights", default=None, help="weights file")
    sm.add_argument("--size", type=int, default=None, help="input size in pixels (default: the model's, else 224)")
    _trust_options(sm)
    _input_options(sm, preprocess=False)  # a layer table: preprocessing does not change it
    sm.set_defaults(func=cmd_summary)

    me = sub.add_parser("methods", parents=[common], help="every method, what it returns and what it needs")
    me.set_defaults(func=cmd_methods)

    info = sub.add_parser("info", parents=[common], help="installed backends, their versions and capabilities")
    info.set_defaults(func=cmd_info)
    mt = sub.add_parser("metrics", parents=[common],
                        help="every method x every registered metric (polyviz.metrics.METRICS) in every framework, "
                             "on the demo model: mean ± sd over images, a picture by category")
    mt.add_argument("--model", default="demo", help="demo (the only model with object masks to point at)")
    mt.add_argument("--weights", default=None, help="demo weights .npz (default: the file shipped with polyviz)")
    mt.add_argument("--backend", default=None, help="comma-separated backends (default: every installed one)")
    mt.add_argument("--methods", default=None, help="comma-separated methods (default: all)")
    mt.add_argument("--images", type=int, default=6, help="number of held-out shapes images (default 6)")
    mt.add_argument("--seed", type=int, default=DEMO_SEED, help=f"seed of the images (default {DEMO_SEED})")
    mt.add_argument("--step", type=int, default=256, help="pixels per deletion/insertion step (default 256 of 4096)")
    mt.add_argument("--infidelity-samples", type=int, default=16, help="perturbations per image (default 16)")
    mt.add_argument("--sensitivity-samples", type=int, default=2, help="perturbed inputs per image (default 2)")
    mt.add_argument("--batch-size", type=int, default=None, help="passes per backend call inside a method")
    mt.add_argument("--metrics", default=None, help="comma-separated metrics (default: every registered one)")
    mt.add_argument("--pointing-tolerance", type=float, default=0.0,
                    help="pointing-game tolerance in pixels (default 0; Zhang et al.: 15 px at 224 px)")
    mt.add_argument("--json", default="", help="write the settings and per-image values as JSON to this file")
    mt.add_argument("--figure", default="", help="save the picture by category (one panel each) to this PNG file")
    mt.add_argument("--out", default="", help="write an HTML page (pictures by category and the table) to this folder")
    mt.add_argument("--no-progress", action="store_true", help="no progress bars")
    mt.set_defaults(func=cmd_metrics)

    bench = sub.add_parser("bench", parents=[common], help="time every method against its floor (and the peers with --peers)")
    bench.add_argument("--backend", default="torch,keras", help="comma-separated backends (default torch,keras)")
    bench.add_argument("--methods", default="", help="comma-separated methods (default: the main ones)")
    bench.add_argument("--model", default="vgg16",
                       help="vgg16 (seeded random weights) or demo (the shipped demo network, 64 px)")
    bench.add_argument("--size", type=int, default=None, help="input size in pixels (default 224; 64 with --quick)")
    bench.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    bench.add_argument("--batch-size", type=int, default=32, help="passes per backend call inside a method")
    bench.add_argument("--repeat", type=int, default=5, help="timed runs per method after a warm-up")
    bench.add_argument("--peers", action="store_true", help="also time Captum, pytorch-grad-cam, tf-keras-vis")
    bench.add_argument("--json", default="", help="write the rows as JSON to this file")
    bench.add_argument("--quick", action="store_true", help="smoke run: small input, few methods, one repeat")
    bench.add_argument("--no-progress", action="store_true", help="no progress bars")
    bench.add_argument("--metrics", default="",
                       help="time metrics instead of methods, against Quantus: 'all' or comma-separated names "
                            "(a one-channel VGG-style net at --size, default 32 px)")
    bench.add_argument("--metric-images", type=int, default=8, help="images per metric row (default 8)")
    bench.set_defaults(func=cmd_bench)
    from polyviz.runs.cli import add_run_command

    add_run_command(sub, common)  # `polyviz run`: whole data sets (polyviz.runs)
    return parser


def _torch_first() -> None:
    """Load torch before TensorFlow when both are installed (a triton clash otherwise)."""
    try:
        from polyviz.registry import backend_class

        backend_class("torch").framework_version()
    except Exception:  # noqa: S110 - torch absent or broken: nothing to order
        pass


def _uses_keras(args: argparse.Namespace) -> bool:
    """Whether the command will drive a Keras model (so TensorFlow is loaded up front, quietly)."""
    from polyviz.loading import MODEL_SUFFIXES

    if args.command in ("info", "methods", "bench"):
        return False
    backend = getattr(args, "backend", None)
    if backend:
        return "keras" in [b.strip() for b in backend.split(",")]
    if args.command in ("demo", "crosscheck", "metrics"):
        return True
    model = str(getattr(args, "model", "") or "")
    return MODEL_SUFFIXES.get(Path(model).suffix.lower()) == "keras"


def _load_tensorflow_quietly() -> None:
    """Import TensorFlow with file descriptor 2 closed: its C++ start-up lines (absl, oneDNN) ignore
    TF_CPP_MIN_LOG_LEVEL and would bury the command's output. Python errors still propagate."""
    import os

    from polyviz.registry import backend_class

    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        backend_class("keras").framework_version()
    except Exception:  # noqa: S110 - not installed or broken: the command reports it when it needs keras
        pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter hides our output
    # OpenMP threads that spin while waiting stall torch when another process holds a core: on a
    # busy 2-core machine the demo's torch half ran 5-8x slower with the default (active) policy
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # retracing notices: not the user's concern
    started = time.perf_counter()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.started = started
    try:
        if args.command not in ("info", "methods"):
            _torch_first()
        if _uses_keras(args) and "tensorflow" not in sys.modules:
            _load_tensorflow_quietly()
        return int(args.func(args))
    except PolyvizError as exc:
        if args.debug:
            raise
        print(f"polyviz: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("polyviz: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
