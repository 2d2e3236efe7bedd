"""bench.py end to end on tiny sizes (--quick), so that it cannot rot: every section runs and
lands in the final table. The figures themselves are not judged here."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_bench_runs_every_section_and_prints_the_table():
    r = subprocess.run([sys.executable, "bench.py", "--quick", "--device", "cpu"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    head, _, table = r.stdout.partition("\nfigure ")
    assert table, "no final table"
    for section in ("== 1.", "== 2.", "== 3.", "== 4.", "== 5."):
        assert section in head
    rows = table.splitlines()[1:-1]  # between the header and the wall-time line
    for figure in ("similarity_stats speed-up", "similarity_stats peak memory",
                   "infonce fwd+bwd", "simclr fwd+bwd", "dcl fwd+bwd", "dhel fwd+bwd",
                   "vrns_loss extra cost", "two_views img/s", "train step", "peak RSS"):
        assert any(row.startswith(figure) for row in rows), figure
    assert all(row.split()[-1] in ("PASS", "FAIL", "-") for row in rows)
    assert table.splitlines()[-1].startswith("wall time")
