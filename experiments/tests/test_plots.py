"""plots.py: the similarity histograms against torch.histc's, past float32's 2^24, the curves of
metrics.jsonl, `plots run` on a run directory as train.py leaves it (its figures, the numbers
they show, one line on bad input), and `plots theory --quick` in a subprocess. Skipped where
matplotlib is not installed (a core-only install)."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import paste_alone

import data
import eval as evaluation
import models
import train

pytest.importorskip("matplotlib")
from experiments import plots  # noqa: E402  (it imports matplotlib)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def brute_force_histograms(u, v, bins):
    """torch.histc of the diagonal of S = U V^T and of the rest, picked by a mask."""
    u, v = F.normalize(u, dim=1), F.normalize(v, dim=1)
    S = (u @ v.T).clamp(-1, 1)  # (N, N)
    off = ~torch.eye(len(u), dtype=torch.bool)
    return torch.histc(S.diagonal(), bins, -1, 1).long(), torch.histc(S[off], bins, -1, 1).long()


@pytest.mark.parametrize("dtype, bins", [(torch.float32, 20), (torch.float64, 20),
                                         (torch.float32, 7)])
def test_histograms_equal_torch_histc_of_the_diagonal_and_the_rest(dtype, bins):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(37, 5, generator=g, dtype=dtype)
    v = u + torch.randn(37, 5, generator=g, dtype=dtype)  # positives near 1, negatives spread
    pos, neg = plots.similarity_histograms(u, v, bins=bins)
    want_pos, want_neg = brute_force_histograms(u, v, bins)
    assert torch.equal(pos, want_pos) and torch.equal(neg, want_neg)
    assert pos.sum() == 37 and neg.sum() == 37 * 36 and pos.dtype == neg.dtype == torch.int64
    assert torch.equal(neg, paste_alone(plots.similarity_histograms)(u, v, bins=bins)[1])


def test_histograms_count_a_bin_past_2_to_the_24():
    """A collapsed run: 4,200 x 4,199 = 17.6M negatives at s = 1, in one bin, where torch.histc
    on float32 input stops counting at 2^24 = 16,777,216."""
    u = torch.ones(4200, 2)
    pos, neg = plots.similarity_histograms(u, u, bins=4)
    assert pos.tolist() == [0, 0, 0, 4200] and neg.tolist() == [0, 0, 0, 4200 * 4199]


def test_histograms_keep_similarities_of_exactly_one():
    u = torch.ones(4, 7)  # every similarity is 1, which float32 rounds to 1 + 1.2e-7 or more
    pos, neg = plots.similarity_histograms(u, u, bins=10)
    assert pos[-1] == 4 and neg[-1] == 12 and pos.sum() == 4 and neg.sum() == 12


def record(epoch, run):
    """One line of metrics.jsonl as train.py writes it; made-up values that move with epoch."""
    n, m = run["train_size"], run["batch_size"]
    low = (n - m) / ((m - 1) * (n - 1) ** 2)
    return {"epoch": epoch, "step": 3 * epoch, "lr": 0.1, "elapsed_s": 1.0 * epoch,
            "batch": {"loss": 5.0 - epoch, "vrns": 0.1 / epoch, "pos_mean": 0.5 + 0.1 * epoch,
                      "neg_mean": 0.3 / epoch, "neg_var": 0.2 / epoch},
            "tracked": {"pos_mean": 0.4 + 0.1 * epoch, "pos_var": 0.01, "neg_mean": 0.2 / epoch,
                        "neg_var": 0.1 / epoch, "within_mean": 0.0, "within_var": 0.1,
                        "count": 32},
            "theory": {"neg_optimum": -1 / (n - 1), "within_batch_neg": -1 / (m - 1),
                       "var_low": low, "var_high": n * low}}


def make_run(path, epochs=3, lam=0.0):
    """A run directory as train.py leaves it (ckpt.pt, metrics.jsonl), without training: the
    'trained' weights are a seed-123 init; --seed 3 draws Table 1's augmentations."""
    run = vars(train.get_parser().parse_args(
        ["--width", "4", "--image-size", "16", "--train-size", "48", "--test-size", "16",
         "--batch-size", "16", "--monitor-size", "0", "--track-size", "16", "--vrns-weight",
         repr(lam), "--epochs", str(epochs), "--seed", "3"]))
    path.mkdir()
    torch.manual_seed(123)
    model = models.ContrastiveModel(run["arch"], width=run["width"], stem=run["stem"])
    torch.save({"args": run, "model": model.state_dict(), "optimizer": {}, "epoch": epochs,
                "finished": True}, path / "ckpt.pt")
    with open(path / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(record(e, run)) + "\n" for e in range(1, epochs + 1))
    return path


def test_metric_curves():
    run = {"train_size": 48, "batch_size": 16}
    records = [record(e, run) for e in (1, 2, 3)]
    curves = plots.metric_curves(records)
    assert curves["epoch"] == [1, 2, 3]
    assert curves["batch_loss"] == [4.0, 3.0, 2.0]
    assert curves["batch_vrns"] == pytest.approx([0.1, 0.05, 0.1 / 3])
    assert curves["tracked_neg_var"] == pytest.approx([0.1, 0.05, 0.1 / 3])
    assert curves["batch_pos_mean"] == pytest.approx([0.6, 0.7, 0.8])
    assert curves["theory"]["neg_optimum"] == -1 / 47
    assert curves["monitor_epoch"] == [] and curves["monitor_knn"] == []  # no monitor ran
    records[0]["monitor"] = {"knn_acc": 20.0, "images": 8}
    records[2]["monitor"] = {"knn_acc": 35.0, "images": 8}
    curves = plots.metric_curves(records)
    assert curves["monitor_epoch"] == [1, 3] and curves["monitor_knn"] == [20, 35]


@pytest.mark.filterwarnings("error::UserWarning")  # e.g. a legend without labelled lines
def test_run_figures_from_the_table1_protocol(tmp_path, capsys):
    base, vrns = make_run(tmp_path / "lam0"), make_run(tmp_path / "lam1", epochs=2, lam=1.0)
    figs = tmp_path / "figs"
    assert plots.main(["run", str(base), str(vrns), "--plot-dir", str(figs), "--device",
                       "cpu"]) == 0
    out = capsys.readouterr().out
    for name in ("similarities.png", "curves.png"):
        assert (figs / name).stat().st_size > 10_000 and f"{figs / name}: " in out
    assert plots.main(["run", str(base), "--device", "cpu"]) == 0  # default: RUN/figures
    assert (base / "figures" / "similarities.png").exists()

    fig = plots.run_figure_data(str(base))
    assert fig["label"] == "lam0: simclr, m = 16, lam = 0"
    count = 48  # the run's --train-size, fewer than Table 1's 5,000
    assert sum(fig["pos_counts"]) == count and sum(fig["neg_counts"]) == count * (count - 1)
    centres = torch.linspace(-1, 1, 101)[:-1] + 1 / 100  # (100,) bins of width 0.02
    for kind in ("pos", "neg"):  # the histograms hold the pairs the statistics describe
        counts = torch.tensor(fig[f"{kind}_counts"], dtype=torch.float64)
        mean = (centres.double() @ counts / counts.sum()).item()
        assert mean == pytest.approx(fig["stats"][f"{kind}_mean"], abs=0.011), kind  # half a bin
    ckpt = torch.load(base / "ckpt.pt")
    images = data.load_dataset("shapes", "train")[0][:count]  # the first training images
    want = evaluation.table1_stats(evaluation.model_of(ckpt), images,  # as train.py's summary
                                   augment_kwargs=data.augment_kwargs("shapes", 16),
                                   generator=torch.Generator().manual_seed(ckpt["args"]["seed"]))
    assert fig["stats"] == pytest.approx(want)
    assert fig["curves"]["epoch"] == [1, 2, 3]


def test_run_on_bad_input_says_why_in_one_line(tmp_path, capsys):
    assert plots.main(["run", str(tmp_path / "nowhere"), "--device", "cpu"]) == 2
    assert "nowhere" in capsys.readouterr().err
    empty = make_run(tmp_path / "empty")
    (empty / "metrics.jsonl").write_text("")  # stopped before its first epoch ended
    assert plots.main(["run", str(empty), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "no epoch record" in err and len(err.strip().splitlines()) == 1


def test_theory_command_writes_every_figure(tmp_path):
    result = subprocess.run([sys.executable, "-m", "experiments.plots", "theory", "--quick",
                             "--plot-dir", str(tmp_path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    names = ["fig2_configurations.png", "thm55_variance_vs_batch.png", "ex54_siglip_phase.png",
             "def57_vrns_sweep.png"]
    assert sorted(os.listdir(tmp_path)) == sorted(names)
    for name in names:
        png = (tmp_path / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < len(png) < 150_000
        assert f"{tmp_path / name}: " in result.stdout
