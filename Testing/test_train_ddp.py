"""`amif train` under torchrun: two CPU processes (gloo) on tiny fake pairs and a tiny network.

Each test starts `python -m torch.distributed.run --nproc_per_node=2` on a driver that calls train() with a tiny
NetConfig (the command line has no option for one); a subprocess timeout turns a hang into a failure."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from test_train import _fake_pairs

from amif.package import load_package

TIMEOUT = 120  # seconds per torchrun: a rank left waiting on the other is a failure, not a hung test suite

DRIVER = textwrap.dedent(
    """
    import json, os, sys

    from amif.network import NetConfig
    from amif_research.train import TrainConfig, train

    args = json.loads(sys.argv[1])
    rank = int(os.environ["RANK"])
    net_cfg = NetConfig(c1=4, c2=8, c3=8, mem_channels=4, mem_size=16, key_features=32, key_hidden=8)
    lines = []
    train(args["key"], args["out"], "TEST · MARK", data_dir=args["data"], checkpoint_dir=args["ck"],
          cfg=TrainConfig.from_flat(**args["cfg"]), net_cfg=net_cfg, progress=False, log=lines.append)
    with open(os.path.join(args["ck"], f"rank{rank}.log"), "w") as f:
        f.write("\\n".join(lines))
    """
)


@pytest.fixture
def torchrun(tiny_package, tmp_path):
    """run(name, **cfg): train the package tmp_path/name/m (checkpoints in tmp_path/name/ck) on two ranks;
    returns its exit status and output (checked by the caller)."""
    _, key, _ = tiny_package
    _fake_pairs(tmp_path / "data")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(name, **cfg):
        args = {
            "key": str(key),
            "out": str(tmp_path / name / "m"),
            "ck": str(tmp_path / name / "ck"),
            "data": str(tmp_path / "data"),
            "cfg": {"batch": 2, "crop": 32, **cfg},
        }
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(driver),
            json.dumps(args),
        ]
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            out = proc.communicate(timeout=TIMEOUT)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
            proc.communicate()
            pytest.fail(f"torchrun {name} {cfg} did not finish in {TIMEOUT} s")
        return proc.returncode, out

    return run


def _ok(result):
    rc, out = result
    assert rc == 0, out[-12000:]


def test_ddp_minutes_stops_every_rank_at_one_step(torchrun, tmp_path):
    """--minutes under torchrun: both ranks stop together, after the same number of steps, with one checkpoint."""
    _ok(torchrun("t", steps=200, minutes=0.002, save_every=1000))  # ignoring the limit trains all 200 steps
    ck = tmp_path / "t" / "ck"
    logs = [(ck / f"rank{r}.log").read_text() for r in (0, 1)]
    assert "time limit" in logs[0], logs
    steps = load_package(tmp_path / "t" / "m").manifest["training"]["steps"]
    assert 0 < steps < 200
    rows = (ck / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + steps  # one row per step taken, all by rank 0
    assert sorted(p.name for p in ck.glob("*.safetensors")) == ["last.safetensors"]
    from safetensors import safe_open

    with safe_open(str(ck / "last.safetensors"), "pt") as f:
        assert int(f.metadata()["step"]) == steps


def test_ddp_resume_is_bit_exact(torchrun, tmp_path):
    """Four steps straight equal two steps, a stop, and a resume for two more, bit for bit (forgers included)."""
    _ok(torchrun("a", steps=4, save_every=100))
    _ok(torchrun("b", steps=2, save_every=100))
    _ok(torchrun("b", steps=4, save_every=100))
    assert "resumed from" in (tmp_path / "b" / "ck" / "rank1.log").read_text()
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / n / "ck" / "last.safetensors")) for n in ("a", "b"))
    assert a.keys() == b.keys()
    assert any(k.startswith("model.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_ddp_manifest_records_world_size_and_effective_batch(torchrun, tmp_path):
    _ok(torchrun("w", steps=1, batch=3, forge_pool=1))
    t = load_package(tmp_path / "w" / "m").manifest["training"]
    assert t["world_size"] == 2
    assert t["batch"] == 3  # per rank
    assert t["effective_batch"] == 6
