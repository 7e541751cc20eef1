"""Where the time of one scenario at batch 1 goes, for ``benchmarks.inference --profile``: the
Python steps (cProfile), the networks' parts (forward hooks) and the torch operators
(torch.profiler), measured in the child process ``benchmarks.inference`` starts for it."""

from __future__ import annotations

import time
from typing import Any

from benchmarks._common import console, memory, set_threads

# (label, file suffix, function) from cProfile: the pure-Python and library steps around the nets.
PROFILE_FUNCTIONS = (
    ("read_image (decode + grey)", "limbscan/io/images.py", "read_image"),
    ("  PIL decode (ImageFile.load)", "PIL/ImageFile.py", "load"),
    ("  DICOM read_dicom", "limbscan/io/dicom.py", "read_dicom"),
    ("preprocess (as_cached: resize + quantise)", "limbscan/data/cache.py", "as_cached"),
    ("  resize_longest (Lanczos)", "limbscan/data/cache.py", "resize_longest"),
    ("detector transform (resize + normalise)", "torchvision/models/detection/transform.py", "forward"),
    ("describe_detections (top-k boxes)", "limbscan/models/detector.py", "describe_detections"),
    ("cascade crops (crop_box)", "limbscan/data/geometry.py", "crop_box"),
    ("letterbox (to the classifier's square)", "limbscan/data/geometry.py", "letterbox"),
    ("paste_masks_in_image", "torchvision/models/detection/roi_heads.py", "paste_masks_in_image"),
    ("pycocotools RLE encode", "pycocotools/mask.py", "encode"),
)
# Submodules of a torchvision detector timed by forward hooks (inclusive wall time).
DETECTOR_PARTS = (
    ("transform", "detector transform"),
    ("backbone", "detector backbone + FPN"),
    ("rpn", "RPN"),
    ("roi_heads", "RoI heads (box + mask)"),
    ("roi_heads.box_roi_pool", "  box RoIAlign"),
    ("roi_heads.box_head", "  box head"),
    ("roi_heads.mask_roi_pool", "  mask RoIAlign"),
    ("roi_heads.mask_head", "  mask head"),
    ("roi_heads.mask_predictor", "  mask predictor"),
)


def _find_modules(predictor: Any) -> dict[str, Any]:
    """The ``torch.nn.Module``s of the predictor's scenarios (their ``detector`` and
    ``classifier``), each once, named by scenario; the detector the cascade shares is timed once."""
    import torch

    found: dict[str, Any] = {}
    for name in predictor.scenarios:
        scenario = predictor.scenario(name)
        for attr in ("detector", "classifier"):
            sub = getattr(scenario, attr, None)
            if isinstance(sub, torch.nn.Module) and all(sub is not seen for seen in found.values()):
                found[f"{name}.{attr}"] = sub
    return found


class _ModuleTimers:
    """Inclusive wall time of chosen modules' forward calls, via pre/post forward hooks."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._handles: list[Any] = []

    def add(self, module: Any, label: str) -> None:
        started: list[float] = []

        def pre(*_: Any) -> None:
            started.append(time.perf_counter())

        def post(*_: Any) -> None:
            self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - started.pop()
            self.calls[label] = self.calls.get(label, 0) + 1

        self._handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _attach_timers(model: Any) -> _ModuleTimers:
    timers = _ModuleTimers()
    for name, module in _find_modules(model).items():
        if all(hasattr(module, part) for part in ("backbone", "rpn", "roi_heads")):
            for path, label in DETECTOR_PARTS:
                sub: Any = module
                for attr in path.split("."):
                    sub = getattr(sub, attr, None)
                if sub is not None:
                    timers.add(sub, label)
        else:
            timers.add(module, f"classifier ({name.split('.')[0]})")
    return timers


def _pstats_rows(stats: Any) -> tuple[list[dict], list[dict]]:
    """(named steps, top functions by cumulative time) from a ``pstats.Stats``."""
    steps = []
    for label, suffix, func in PROFILE_FUNCTIONS:
        hits = [(v[1], v[3]) for (file, _, name), v in stats.stats.items() if name == func and file.endswith(suffix)]
        if hits:
            steps.append({"step": label, "calls": sum(h[0] for h in hits), "seconds": sum(h[1] for h in hits)})
    top = sorted(stats.stats.items(), key=lambda kv: kv[1][3], reverse=True)
    functions = []
    for (file, line, name), (_, ncalls, tottime, cumtime, _) in top:
        if name.startswith("<") or "_call_impl" in name or "_wrapped_call_impl" in name:
            continue  # module dispatch / built-in wrappers: they repeat their callee's time
        functions.append(
            {
                "function": f"{_short(file)}:{line}({name})",
                "calls": ncalls,
                "tottime_s": round(tottime, 3),
                "cumtime_s": round(cumtime, 3),
            }
        )
        if len(functions) == 30:
            break
    return steps, functions


def _short(file: str) -> str:
    for marker in ("site-packages/", "src/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def profile_limbscan(spec: dict) -> dict:
    """Where the time of one scenario at batch 1 goes: Python steps, modules, torch operators."""
    import cProfile
    import pstats

    set_threads(spec["threads"])
    import torch
    from torch.profiler import ProfilerActivity, profile

    import limbscan.inference as inference

    model = inference.load(spec["bundle"], runtime=spec.get("runtime", "torch"))
    paths = spec["paths"]
    kwargs = {"scenario": spec["scenario"], "batch_size": 1, "masks": spec["masks"]}
    model.predict(paths[:1], **kwargs)  # warm-up; also loads any lazily built stage

    # 1. Plain wall time with per-module timers (hooks cost microseconds).
    timers = _attach_timers(model)
    start = time.perf_counter()
    model.predict(paths, **kwargs)
    wall = time.perf_counter() - start
    timers.remove()
    modules = [
        {"part": k, "calls": timers.calls[k], "seconds": round(v, 3), "share": round(v / wall, 3)}
        for k, v in timers.seconds.items()
    ]

    # 2. cProfile: the Python-level steps (decode, resize, mask paste) the nets sit between.
    prof = cProfile.Profile()
    prof.enable()
    model.predict(paths, **kwargs)
    prof.disable()
    stats = pstats.Stats(prof)
    steps, functions = _pstats_rows(stats)
    cprofile_total = sum(v[2] for v in stats.stats.values())  # sum of tottime = the profiled wall
    for step in steps:
        step["share"] = round(step["seconds"] / cprofile_total, 3)
        step["seconds"] = round(step["seconds"], 3)

    # 3. torch.profiler: which operators the nets spend it in.
    with profile(activities=[ProfilerActivity.CPU]) as tprof:
        model.predict(paths, **kwargs)
    averages = tprof.key_averages()
    ops = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:25]
    op_total = sum(e.self_cpu_time_total for e in averages) or 1.0
    top_ops = [
        {
            "op": e.key,
            "calls": e.count,
            "self_cpu_s": round(e.self_cpu_time_total / 1e6, 3),
            "share": round(e.self_cpu_time_total / op_total, 3),
        }
        for e in ops
    ]
    return {
        "scenario": spec["scenario"],
        "masks": spec["masks"],
        "images": len(paths),
        "threads": torch.get_num_threads(),
        "wall_s": round(wall, 3),
        "images_per_s": round(len(paths) / wall, 3),
        "modules": modules,
        "steps": steps,
        "cprofile_total_s": round(cprofile_total, 3),
        "top_functions": functions,
        "top_ops": top_ops,
        **memory(),
    }


def print_profile(p: dict) -> None:
    from rich.table import Table

    out = console()
    if "error" in p:
        out.print(f"[red]profile failed: {p['error']}")
        return
    out.print(
        f"profile: {p['scenario']} at batch 1, masks={p['masks']}, {p['images']} images, "
        f"{p['threads']} threads: {p['wall_s']:.2f} s ({p['images_per_s']:.2f} images/s), "
        f"peak RSS {p['peak_rss_mb']:.0f} MB"
    )
    for title, key, cols in (
        ("modules (forward hooks, inclusive wall time)", "modules", ("part", "calls", "seconds", "share")),
        ("steps (cProfile cumulative; shares of the cProfile'd total)", "steps", ("step", "calls", "seconds", "share")),
        ("top functions (cProfile cumulative)", "top_functions", ("function", "calls", "tottime_s", "cumtime_s")),
        ("top torch operators (self CPU)", "top_ops", ("op", "calls", "self_cpu_s", "share")),
    ):
        table = Table(title=title)
        for col in cols:
            table.add_column(col, justify="left" if col in ("part", "step", "function", "op") else "right")
        for row in p[key]:
            table.add_row(*(str(row[c]) for c in cols))
        out.print(table)
