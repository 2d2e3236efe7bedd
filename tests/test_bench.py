"""bench.py end to end on tiny sizes (--quick), so that it cannot rot: every section runs, every
target lands in the final table, and the exit status agrees with the verdicts. The figures
themselves are not judged here: on a shared machine they are noise."""
import math
import os
import re
import subprocess
import sys

import torch

import bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = ("similarity_stats speed-up", "similarity_stats peak memory", "infonce fwd+bwd",
        "simclr fwd+bwd", "dcl fwd+bwd", "dhel fwd+bwd", "vrns_loss fwd+bwd / its floor, m=",
        "vrns_loss fwd+bwd / train step", "two_views img/s / torchvision PIL",
        "train step resnet18", "peak RSS of the CPU default train.py run",
        "busy CPU: default threads, busy / quiet", "busy CPU: default threads quiet / all cores",
        "busy CPU: 1 thread", "busy CPU: all cores", "GPU epoch of 50k images")


def test_quick_bench_prints_every_row_and_exits_by_its_verdicts():
    r = subprocess.run([sys.executable, "bench.py", "--quick", "--device", "cpu"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.returncode in (0, 1), r.stderr[-3000:]
    first = r.stdout.splitlines()[0]
    assert first.startswith("machine: ") and f"torch {torch.__version__}" in first
    assert "thread" in first and "load average" in r.stdout.splitlines()[1]
    head, _, table = r.stdout.partition("\nfigure ")
    assert table, "no final table"
    for section in ("== 1.", "== 2.", "== 2b.", "== 3.", "== 4.", "== 5.", "== 6."):
        assert section in head
    rows = table.splitlines()[1:-1]  # between the header and the wall-time line
    for figure in ROWS:
        assert any(row.startswith(figure) for row in rows), figure
    for m in (16, 32):  # the L_VRNS batch sizes of --quick: both targets at each
        assert sum(row.startswith("vrns_loss") and f", m={m} " in row for row in rows) == 2, m
    verdicts = [row.split()[-1] for row in rows]
    assert set(verdicts) <= {"PASS", "FAIL", "-", "skip"}
    if not torch.cuda.is_available():
        gpu = [row for row in rows if row.startswith("GPU epoch")]
        assert len(gpu) == 3 and all("skipped (no GPU)" in row and row.endswith("skip")
                                     for row in gpu)
    assert r.returncode == int("FAIL" in verdicts)
    assert table.splitlines()[-1].startswith("wall time")
    pids = re.findall(r"busy-looping process (\d+) stopped", head)
    assert len(pids) == 1, "the busy loop was not started and stopped once"
    if os.path.isdir("/proc/self"):  # Linux: the busy loop is gone
        assert not os.path.exists(f"/proc/{pids[0]}/cmdline") or "while True" not in open(
            f"/proc/{pids[0]}/cmdline").read()


def test_exit_status_counts_failures_only():
    passed = [("a", "1x", "<= 2x", True), ("b", "3 img/s", "-", None),
              ("c", "skipped (no GPU)", "<= 6 s", None)]
    assert bench.print_table(passed) == 0
    assert bench.print_table(passed + [("d", "3x", "<= 2x", False)]) == 1


def test_gpu_figures_run_on_the_cpu_at_a_tiny_size():
    """The function behind the GPU rows, on the CPU: what a first run on a GPU needs besides
    CUDA itself (the training step, its augmentation, the timing) works."""
    config = dict(width=4, stem="cifar", dataset="cifar10")
    f = bench.gpu_step_figures(config, 8, device=torch.device("cpu"), compile_model=False,
                               rounds=1, reps=1)
    assert f["memory"] is None
    assert 0 < f["augment_s"] and 0 < f["step_s"] and math.isfinite(f["step_s"])
    assert bench.model_flops_per_image(config) > 0
