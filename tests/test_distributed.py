"""Several processes: the gathered negatives give two CPU processes (gloo) the gradients of one
on the same global batch; train.py runs under torchrun and its checkpoint resumes in one."""
import json
import os
import subprocess
import sys

import pytest
import torch

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TINY = ["--train-size", "128", "--test-size", "128", "--width", "4", "--batch-size", "32",
        "--epochs", "1", "--track-size", "64", "--monitor-size", "32", "--probe-epochs", "1",
        "--precision", "fp32", "--threads", "1"]


def run(cmd):
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def test_gradients_equal_single_process(tmp_path):
    run([sys.executable, "tests/ddp_worker.py", str(tmp_path / "one.pt")])
    run([*TORCHRUN, "tests/ddp_worker.py", str(tmp_path / "two.pt")])
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    for name, g in one.items():
        torch.testing.assert_close(two[name], g, rtol=1e-9, atol=1e-12,
                                   msg=lambda text, name=name: f"{name}: {text}")


def test_batch_not_divisible_by_processes_is_rejected(tmp_path, monkeypatch, capsys):
    """Checked before any process group starts: as torchrun would set it, in this process."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as e:
        train.main([*TINY, "--batch-size", "33", "--out-dir", str(tmp_path)])
    assert e.value.code == 2 and "not divisible by 2 processes" in capsys.readouterr().err


def test_two_process_run_and_its_checkpoint_resumes_in_one_process(tmp_path):
    """No per-process random state is stored: a run checkpointed by two processes continues
    in one (its second epoch is replayed here, then evaluated)."""
    r = run([*TORCHRUN, "train.py", *TINY, "--epochs", "2", "--out-dir", str(tmp_path)])
    assert "2 process(es)" in r.stdout and "linear probe" in r.stdout
    ckpt = torch.load(tmp_path / "ckpt.pt")
    assert ckpt["epoch"] == 2 and ckpt["finished"]
    ckpt.update(epoch=1, finished=False)
    torch.save(ckpt, tmp_path / "ckpt.pt")
    (tmp_path / "summary.json").unlink()
    r = run([sys.executable, "train.py", "--resume", str(tmp_path)])
    assert "1 process(es)" in r.stdout and (tmp_path / "summary.json").exists()
    assert [r["epoch"] for r in map(json.loads, open(tmp_path / "metrics.jsonl"))] == [1, 2]
