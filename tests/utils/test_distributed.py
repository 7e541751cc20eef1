"""limbscan.utils.distributed: one process without torchrun, a gloo group with it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from limbscan.utils.distributed import DistInfo, all_gather_objects, barrier, init_distributed, shutdown_distributed


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("world_size", [None, "1", "0"])
def test_without_torchrun_it_is_rank_0_of_1_on_cpu(no_cuda, monkeypatch: pytest.MonkeyPatch, world_size) -> None:
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    if world_size is not None:
        monkeypatch.setenv("WORLD_SIZE", world_size)
        monkeypatch.setenv("LOCAL_RANK", "3")  # ignored for a single process
    info = init_distributed()
    assert info == DistInfo(0, 1, 0, torch.device("cpu"))
    assert info.is_main and not info.distributed
    assert not dist.is_initialized()  # no process group was started for one process
    shutdown_distributed()  # nothing to end: a no-op


def test_dist_info_properties_and_immutability() -> None:
    worker = DistInfo(rank=2, world_size=4, local_rank=0, device=torch.device("cpu"))
    assert not worker.is_main and worker.distributed
    with pytest.raises(AttributeError):
        worker.rank = 0  # type: ignore[misc]


def test_gather_in_one_process_is_the_object_itself() -> None:
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    obj = {"rng": [1, 2, 3]}
    gathered = all_gather_objects(obj, info)
    assert gathered == [obj] and gathered[0] is obj
    barrier(info)  # one process: returns at once, with no process group to wait on
    assert not dist.is_initialized()


def test_old_import_paths_give_the_same_objects() -> None:
    import limbscan.train
    import limbscan.utils
    from limbscan.train import engine
    from limbscan.utils import distributed

    for name in ("DistInfo", "init_distributed", "shutdown_distributed"):
        assert getattr(engine, name) is getattr(distributed, name), name
    for name in ("DistInfo", "all_gather_objects", "barrier", "init_distributed", "shutdown_distributed"):
        assert getattr(limbscan.utils, name) is getattr(distributed, name), name
    assert limbscan.train.init_distributed is init_distributed
    assert limbscan.train.shutdown_distributed is shutdown_distributed
    with pytest.raises(AttributeError):
        limbscan.utils.no_such_name  # noqa: B018


def test_predict_does_not_import_the_training_engine() -> None:
    code = (
        "import sys, limbscan.predict; "
        "bad = sorted(m for m in sys.modules if m.startswith('limbscan.train')); "
        "assert not bad, bad"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


_WORKER = """
import json, sys
from limbscan.utils.distributed import all_gather_objects, barrier, init_distributed, shutdown_distributed

info = init_distributed()
barrier(info)
again = init_distributed()  # idempotent: joins the same group
gathered = all_gather_objects({"rank": info.rank, "payload": "x" * (info.rank + 1)}, info)
with open(f"{sys.argv[1]}/rank{info.rank}.json", "w") as fh:
    json.dump({"info": [info.rank, info.world_size, info.local_rank, str(info.device)],
               "again": [again.rank, again.world_size], "gathered": gathered}, fh)
shutdown_distributed()
"""


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
def test_two_gloo_processes_join_gather_in_rank_order_and_leave(tmp_path: Path) -> None:
    import json

    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    expected = [{"rank": 0, "payload": "x"}, {"rank": 1, "payload": "xx"}]
    for rank in (0, 1):
        out = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert out["info"] == [rank, 2, rank, "cpu"]
        assert out["again"] == [rank, 2]
        assert out["gathered"] == expected
