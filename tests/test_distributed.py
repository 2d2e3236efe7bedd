"""Two CPU processes (gloo) compute what one process computes on the same global batch."""
import os
import subprocess
import sys

import pytest
import torch

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
# float32 runs that sum in different orders drift apart as training amplifies the rounding:
# at width 4 the gradients themselves are ill-conditioned (float32 against float64: up to 1 %
# of the largest entry on the im2col path and the channels_last path alike), so the weights are
# compared after ONE plain SGD step, where rounding moves them by < 1e-3 and a process that
# trains on the wrong rows moves them by 3e-2. In float64 the gradients agree to 1e-12
# (test_gradients_equal_single_process).
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
        torch.testing.assert_close(two[name], g, rtol=1e-5, atol=1e-10,
                                   msg=lambda text, name=name: f"{name}: {text}")


def test_two_process_run_ends_at_single_process_weights(tmp_path):
    one_step = [*TINY, "--train-size", "32", "--optimizer", "sgd"]  # m = 32: one step
    run([sys.executable, "train.py", *one_step, "--out-dir", str(tmp_path / "one")])
    r = run([*TORCHRUN, "train.py", *one_step, "--out-dir", str(tmp_path / "two")])
    assert "2 process(es)" in r.stdout
    one = torch.load(tmp_path / "one" / "ckpt.pt", weights_only=True)["model"]
    two = torch.load(tmp_path / "two" / "ckpt.pt", weights_only=True)["model"]
    for name, w in one.items():
        if w.is_floating_point():
            torch.testing.assert_close(two[name], w, rtol=1e-3, atol=3e-3,
                                       msg=lambda text, name=name: f"{name}: {text}")
        else:
            assert torch.equal(two[name], w), name


def test_batch_not_divisible_by_processes_is_rejected(tmp_path, monkeypatch, capsys):
    """Checked before any process group starts: as torchrun would set it, in this process."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as e:
        train.main([*TINY, "--batch-size", "33", "--out-dir", str(tmp_path)])
    assert e.value.code == 2 and "not divisible by the 2 processes" in capsys.readouterr().err


def test_two_process_checkpoint_resumes_in_one_process(tmp_path):
    """No per-process random state is stored: a run checkpointed by two processes continues
    in one (its last epoch is replayed here, then evaluated)."""
    run([*TORCHRUN, "train.py", *TINY, "--epochs", "2", "--out-dir", str(tmp_path)])
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    ckpt.update(step=4, epochs_logged=1, finished=False)
    torch.save(ckpt, tmp_path / "ckpt.pt")
    (tmp_path / "summary.json").unlink()
    r = run([sys.executable, "train.py", "--resume", str(tmp_path)])
    assert "1 process(es)" in r.stdout and (tmp_path / "summary.json").exists()
