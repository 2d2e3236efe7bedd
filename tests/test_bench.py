"""bench.py end to end on tiny sizes (--quick), so that it cannot rot: every section runs, every
target lands in the final table, each verdict agrees with the measured figure and the target
printed beside it, and the exit status agrees with the verdicts. The figures themselves are not
judged here: at tiny sizes on a shared machine they are noise."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import bench
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = ("similarity_stats speed-up", "similarity_stats peak memory", "infonce fwd+bwd",
        "simclr fwd+bwd", "dcl fwd+bwd", "dhel fwd+bwd", "vrns_loss fwd+bwd / vrns_floor",
        "two_views img/s / torchvision PIL", "choose_speed's pick / fastest candidate, quiet",
        "choose_speed's pick / fastest candidate, busy",
        "default step at the picks, busy / quiet", "vrns_loss fwd+bwd / train step",
        "two_views alone / train step", "GPU epoch of 50k images",
        "peak RSS of the default train.py run")
NUMBER = r"([\d,]+(?:\.\d+)?) ?(x|%|MiB|GB|s)(?!\w)"  # a figure and its unit: 1,234x, 0.96 GB


@pytest.fixture(scope="module")
def quick():
    r = subprocess.run([sys.executable, "bench.py", "--quick", "--device", "cpu"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    head, _, table = r.stdout.partition("\nfigure ")
    assert table, f"no final table:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r, head, table.splitlines()[1:-1]  # rows between the header and the wall-time line


def test_quick_bench_runs_every_section_and_prints_every_row(quick):
    r, head, rows = quick
    first, second = r.stdout.splitlines()[:2]
    assert first.startswith("machine: ") and f"torch {torch.__version__}" in first
    assert "cores" in first and "load average" in second
    for section in ("== 1.", "== 2.", "== 3.", "== 4a.", "== 4b.", "== 5."):
        assert section in head, section
    for figure in ROWS:
        assert any(row.startswith(figure) for row in rows), figure
    assert sum(row.startswith("vrns_loss fwd+bwd / train step") for row in rows) == 2  # m 8, 16
    assert {row.split()[-1] for row in rows} <= {"PASS", "FAIL", "-", "skip"}
    if not torch.cuda.is_available():
        gpu = [row for row in rows if row.startswith("GPU epoch")]
        assert len(gpu) == 2 and all("skipped (no GPU)" in row and row.endswith("skip")
                                     for row in gpu)
    pids = re.findall(r"busy-looping process (\d+) started", head)
    assert len(pids) == 1 and f"busy-looping process {pids[0]} stopped" in head
    if os.path.isdir("/proc/self"):  # Linux: the busy loop is gone
        assert not os.path.exists(f"/proc/{pids[0]}/cmdline") or "while True" not in open(
            f"/proc/{pids[0]}/cmdline").read()


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
    assert judged >= 8
    assert r.returncode == int(any(row.endswith("FAIL") for row in rows))


def test_exit_status_counts_failures_only():
    passed = [("a", "1x", "<= 2x", True), ("b", "3 img/s", "-", None),
              ("c", "skipped (no GPU)", "<= 6 s", None)]
    assert bench.print_table(passed) == 0
    assert bench.print_table(passed + [("d", "3x", "<= 2x", False)]) == 1


def test_split_prints_a_runs_time_split_or_says_it_has_none(tmp_path, capsys):
    with_split = tmp_path / "a.json"
    with_split.write_text(json.dumps({"time_s": {"setup": 2.0, "train_steps": 6.0,
                                                 "total": 8.0}}))
    assert bench.main(["--split", str(with_split)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"train_steps +6\.0 s +75\.0%", out) and "total" in out
    without = tmp_path / "b.json"
    without.write_text(json.dumps({"linear_acc": 50.0}))
    assert bench.main(["--split", str(without)]) == 1
    assert capsys.readouterr().out.count("\n") == 1  # one line says why
    assert bench.main(["--split", str(tmp_path / "missing.json")]) == 1


def test_the_default_step_is_train_pys_default():
    d = train.get_parser().parse_args([])
    assert bench.SMALL == dict(width=d.width, stem=d.stem, dataset=d.dataset)
    assert (d.arch, d.batch_size, d.loss, d.optimizer) == ("resnet18", 128, "simclr", "adamw")
