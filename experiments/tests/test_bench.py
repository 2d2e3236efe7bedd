"""bench.py end to end on tiny sizes (--quick), so that it cannot rot: every section runs, every
target lands in the final table, each verdict agrees with the measured figure and the target
printed beside it, and the exit status agrees with the verdicts. The figures themselves are not
judged here: at tiny sizes on a shared machine they are noise. It runs with oneDNN held to AVX2,
as on a CPU without bf16 instructions: the step's default precision there is fp32."""
import os
import re
import subprocess
import sys

import pytest
import torch

import train
from experiments import bench

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROWS = ("similarity_stats speed-up", "infonce fwd+bwd", "simclr fwd+bwd", "dcl fwd+bwd",
        "dhel fwd+bwd", "vrns_loss fwd+bwd / vrns_floor", "two_views img/s / torchvision PIL",
        "vrns_loss fwd+bwd / train step", "two_views alone / train step",
        "GPU epoch of 50k images")
NUMBER = r"([\d,]+(?:\.\d+)?) ?(x|%|s)(?!\w)"  # a figure and its unit: 1,234x, 0.48%, 5.2 s


@pytest.fixture(scope="module")
def quick():
    r = subprocess.run([sys.executable, "-m", "experiments.bench", "--quick", "--device", "cpu"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    head, _, table = r.stdout.partition("\nfigure ")
    assert table, f"no final table:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r, head, table.splitlines()[1:-1]  # rows between the header and the wall-time line


def test_quick_bench_runs_every_section_and_prints_every_row(quick):
    r, head, rows = quick
    first, second = r.stdout.splitlines()[:2]
    assert first.startswith("machine: ") and f"torch {torch.__version__}" in first
    assert "cores" in first and "load average" in second
    for section in ("== 1.", "== 2.", "== 3.", "== 4."):
        assert section in head, section
    assert re.search(r"== 4\. .*, fp32, ", head)  # a CPU's default: no bf16 autocast
    for figure in ROWS:
        assert any(row.startswith(figure) for row in rows), figure
    assert sum(row.startswith("vrns_loss fwd+bwd / train step") for row in rows) == 2  # m 8, 16
    assert {row.split()[-1] for row in rows} <= {"PASS", "FAIL", "-", "skip"}
    if not torch.cuda.is_available():
        gpu = [row for row in rows if row.startswith("GPU epoch")]
        assert len(gpu) == 2 and all("skipped (no GPU)" in row and row.endswith("skip")
                                     for row in gpu)


def test_every_verdict_follows_from_its_figure_and_target(quick):
    r, _, rows = quick
    judged = 0
    for row in rows:
        verdict = row.split()[-1]
        target = re.search(r"  ([<>]=) " + NUMBER, row)
        if verdict not in ("PASS", "FAIL"):
            continue
        measured = re.search(NUMBER + r"(?: \(.*\))?  +[<>]=", row)
        assert target and measured and measured.group(2) == target.group(3), row
        value, limit = (float(x.replace(",", "")) for x in (measured.group(1), target.group(2)))
        if value != limit:  # equal as printed: the rounding decides, not the comparison
            assert (verdict == "PASS") == (value <= limit if target.group(1) == "<=" else
                                           value >= limit), row
            judged += 1
    assert judged >= 6
    assert r.returncode == int(any(row.endswith("FAIL") for row in rows))


def test_exit_status_counts_failures_only():
    passed = [("a", "1x", "<= 2x", True), ("b", "3 img/s", "-", None),
              ("c", "skipped (no GPU)", "<= 6 s", None)]
    assert bench.print_table(passed) == 0
    assert bench.print_table(passed + [("d", "3x", "<= 2x", False)]) == 1


def test_the_default_step_is_train_pys_default():
    d = train.get_parser().parse_args([])
    assert bench.SMALL == dict(width=d.width, stem=d.stem, dataset=d.dataset)
    assert (d.arch, d.batch_size, d.loss, d.optimizer) == ("resnet18", 128, "simclr", "adamw")
