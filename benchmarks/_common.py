"""What the benchmarks share: memory read from /proc, the machine a run measured, the JSON report,
and one measurement in a fresh interpreter."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

# The folder that holds this package: a child interpreter finds ``benchmarks`` there.
REPO = Path(__file__).resolve().parents[1]
# The peer every speed is compared with: torchvision's Mask R-CNN at its defaults, random weights.
TORCHVISION = "torchvision-maskrcnn_resnet50_fpn"


# -- memory ----------------------------------------------------------------------------------
def status_mb(field: str, pid: int | str = "self") -> float:
    """A ``/proc/PID/status`` size (``VmHWM``: peak resident set, ``VmRSS``: now) in MB; 0.0
    when the process has just exited or the field is absent.

    Not ``getrusage``: Linux carries the RSS a child had between fork and exec into its
    ``ru_maxrss``, so a spawned process would report its parent's size as its own.
    """
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def memory() -> dict[str, float]:
    """This process's peak RSS (``VmHWM``), and ``ru_maxrss`` beside it for reference."""
    import resource

    return {
        "peak_rss_mb": round(status_mb("VmHWM"), 1),
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


# -- the report ------------------------------------------------------------------------------
def machine_info(threads: int | None = None) -> dict:
    """CPU, thread count and the versions that decide the numbers (imports torch)."""
    import torch
    import torchvision

    import limbscan

    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": model,
        "threads": threads,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "limbscan": limbscan.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def command(module: str, argv: list[str] | None) -> str:
    """The command line that ran ``module`` (``argv``: its arguments; None: this process's)."""
    return " ".join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def write_report(out: Path, report: dict) -> dict:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return report


def console() -> Any:
    from rich.console import Console

    found = Console()
    # piped into a log, rich assumes 80 columns and elides the cells that matter
    return found if found.is_terminal else Console(width=160)


# -- a measurement in its own process ----------------------------------------------------------
def run_module(module: str, args: list[str], env: dict[str, str] | None = None, timeout: float | None = None,
               check: bool = False) -> subprocess.CompletedProcess:
    """``python -m module args`` in a fresh interpreter, output captured; the package is found
    from any working directory (``REPO`` ends the child's ``PYTHONPATH``)."""
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(REPO)) if p)
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=check)


def last_json_line(stdout: str) -> Any:
    """A child's result: the last line it printed, as JSON."""
    return json.loads(stdout.strip().splitlines()[-1])
