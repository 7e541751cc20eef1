"""The train -> export -> evaluate pipeline behind ``limbscan benchmark`` (``make bench``).

Every scenario trained on one split into ``OUT/run/``, exported to ``OUT/model.limbscan`` with
thresholds picked on validation, and that bundle (exactly what ships) evaluated once on test into
``OUT/report/`` with each stage's wall time and peak memory. Rerunning resumes: stages already
trained are kept.
"""

from __future__ import annotations

import copy
import resource
import time
from pathlib import Path
from typing import Any

from limbscan.config import Config, save_config
from limbscan.eval.evaluate import measure
from limbscan.rundir import RunDir
from limbscan.scenarios import names

TIMING_NOTE = (
    "Wall time of each stage as run here; a stage resumed from an earlier call counts only the time "
    "spent in this call. Peak RSS is the process's high-water mark at the end of the stage "
    "(so it never falls from one stage to the next); DataLoader workers are separate processes "
    "and not included."
)


BUNDLE_NAME = "model.limbscan"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def run_pipeline(
    dataset: str | Path, cfg: Config, out: str | Path, n_boot: int = 2000, progress: bool = True,
    default_from_cv: str | Path | None = None,
) -> dict[str, Any]:
    """Train every scenario into ``out/run`` (resuming), export ``out/model.limbscan`` (its
    default scenario chosen on validation, or by the ``limbscan cv`` folder ``default_from_cv``),
    evaluate it once on the test split into ``out/report``; the metrics with each step's time."""
    from limbscan.bundle import export_bundle
    from limbscan.train.runner import train

    out = Path(out)
    run = RunDir(out / "run")
    run.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.config)
    timing = []
    started = time.perf_counter()
    for name in names():  # registry order: a scenario after those it needs (the cascade after the detector)
        stage_cfg = copy.deepcopy(cfg)
        stage_cfg.train.scenario = name
        t0 = time.perf_counter()
        train(dataset, stage_cfg, run.root, resume=True, progress=progress)
        timing.append({"stage": f"train {name}", "seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb()})
    t0 = time.perf_counter()
    bundle = export_bundle(run.root, out / BUNDLE_NAME, overwrite=True, default_from_cv_dir=default_from_cv)
    timing.append({"stage": "export bundle", "seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb()})
    t0 = time.perf_counter()
    result = measure(bundle, dataset, "test", n_boot=n_boot, progress=progress)
    metrics = result.metrics
    timing.append({"stage": "evaluate (test)", "seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb()})
    timing.append({"stage": "total", "seconds": time.perf_counter() - started, "peak_rss_mb": _peak_rss_mb()})
    metrics["timing"] = timing
    metrics["timing_note"] = TIMING_NOTE
    result.write(out / "report")  # last, so that it carries the evaluation's own time
    return metrics
