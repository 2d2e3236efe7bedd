"""eval.py on data built so that a wrong evaluation gives a different answer: the probe on
directions only, the kNN vote over k neighbours, features in eval mode, the Table 1 statistics
on two independent views, the random-init baseline without the trained weights; the checkpoint
reader; the figures' data and the --plot command. Tiny models, about ten seconds on one core."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import paste_alone

import data
import eval as evaluation
import models
import theory

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def tiny_model(seed):
    torch.manual_seed(seed)
    return models.ContrastiveModel("resnet18", width=4, stem="cifar_s2", proj_hidden=32,
                                   proj_dim=16)


def warmed_up(model):
    """BatchNorm running statistics of inputs unlike any test batch (3 train-mode passes over
    noise of scale 3): eval mode and train mode then give different outputs."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(3 * torch.randn(8, 3, 16, 16))
    return model


def directions(count, seed):
    """Four classes told apart by the direction of a 2-D feature alone (45 + 90 c degrees, +-0.5
    rad of noise); row norms 2^-8 ... 2^8 carry no information but dwarf the directions."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 4  # (N,)
    angle = torch.pi / 4 + labels * torch.pi / 2 + (torch.rand(count, generator=g) - 0.5)
    unit = torch.stack([angle.cos(), angle.sin()], 1)  # (N, 2)
    scale = 2.0 ** torch.randint(-8, 9, (count, 1), generator=g)  # (N, 1) exact powers of two
    return unit, unit * scale, labels


# ---- linear probe and kNN -------------------------------------------------------------------

PROBES = [(evaluation.linear_probe, dict(num_classes=4, epochs=10, batch_size=16)),
          (evaluation.linear_probe_lbfgs, dict(num_classes=4))]


@pytest.mark.parametrize("probe, kw", PROBES, ids=["sgd", "lbfgs"])
def test_linear_probe_sees_directions_not_norms(probe, kw):
    train_unit, train_scaled, train_y = directions(200, seed=0)
    test_unit, test_scaled, test_y = directions(100, seed=1)
    acc = probe(train_scaled, train_y, test_scaled, test_y, **kw)
    assert acc == 100.0
    # powers of two normalise exactly: the probe must not see the scale at all
    assert probe(train_unit, train_y, test_unit, test_y, **kw) == acc
    assert paste_alone(probe)(train_scaled, train_y, test_scaled, test_y, **kw) == acc


@pytest.mark.parametrize("probe, kw", PROBES, ids=["sgd", "lbfgs"])
def test_linear_probe_cannot_read_a_class_written_in_the_norm(probe, kw):
    """Both classes share one distribution of directions, around e1; only the norm (1/2 or 2)
    tells them apart. On L2-normalised features that is chance; a probe on raw features reads
    it off the first coordinate."""
    g = torch.Generator().manual_seed(0)

    def sample(count):
        y = torch.arange(count) % 2
        toward_e1 = torch.randn(count, 8, generator=g) + 3 * torch.eye(8)[0]  # (count, 8)
        x = F.normalize(toward_e1, dim=1) * (0.5 + 1.5 * y[:, None])
        return x, y

    (train_f, train_y), (test_f, test_y) = sample(400), sample(1000)
    assert probe(train_f, train_y, test_f, test_y, **{**kw, "num_classes": 2}) < 65.0


def test_lbfgs_probe_reaches_the_minimum_that_short_sgd_stops_short_of():
    """Two classes 2 apart along a noisy axis (std 4) and 0.2 apart along a quiet one (std 0.02),
    plus a constant feature: the logistic regression separates them on the quiet axis (100 %),
    while a probe that stops early stays near the difference of the class means, which points
    along the noisy axis (about 62 %; the paper's 200 SGD epochs reach 65 % here). The fit must
    reach the first, and neither one iteration nor a weight decay that pins W near 0 may."""
    g = torch.Generator().manual_seed(0)

    def sample(count):
        y = torch.arange(count) % 2
        sign = 2.0 * y - 1
        x = torch.stack([sign + 4 * torch.randn(count, generator=g),
                         0.1 * sign + 0.02 * torch.randn(count, generator=g),
                         torch.full((count,), 5.0)], 1)  # (count, 3)
        return x, y

    (train_f, train_y), (test_f, test_y) = sample(400), sample(2000)
    kw = dict(num_classes=2)
    assert evaluation.linear_probe(train_f, train_y, test_f, test_y, epochs=2, **kw) < 70.0
    assert evaluation.linear_probe_lbfgs(train_f, train_y, test_f, test_y, **kw) > 99.0
    assert evaluation.linear_probe_lbfgs(train_f, train_y, test_f, test_y, max_iter=1,
                                         **kw) < 70.0
    assert evaluation.linear_probe_lbfgs(train_f, train_y, test_f, test_y, weight_decay=1.0,
                                         **kw) < 70.0


def test_probe_scores_the_test_features_not_the_training_ones():
    """Random training labels on 64 dims are memorised (> 90 % on the training set), while test
    features whose labels follow their direction are at chance for that probe: a probe or an
    evaluate() that scored the training split would report far more."""
    g = torch.Generator().manual_seed(0)
    train_f, train_y = torch.randn(48, 64, generator=g), torch.randint(0, 2, (48,), generator=g)
    test_unit, _, test_y = directions(400, seed=1)  # (400, 2), 4 classes
    test_f = torch.cat([test_unit, torch.zeros(400, 62)], 1)  # (400, 64)
    kw = dict(num_classes=4, epochs=200, batch_size=48)
    assert evaluation.linear_probe(train_f, train_y, train_f, train_y, **kw) > 90.0
    assert evaluation.linear_probe(train_f, train_y, test_f, test_y, **kw) < 60.0
    assert evaluation.linear_probe_lbfgs(train_f, train_y, train_f, train_y, num_classes=4) > 90
    assert evaluation.linear_probe_lbfgs(train_f, train_y, test_f, test_y, num_classes=4) < 60
    model = models.ContrastiveModel("resnet18", width=4, stem="cifar_s2")
    pairs = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    result = evaluation.evaluate(model, train_f, train_y, test_f, test_y, pairs, num_classes=4,
                                 augment_kwargs=data.augment_kwargs("shapes"), probe_epochs=200)
    assert max(result["linear_acc"], result["linear_lbfgs_acc"], result["knn_acc"]) < 60.0


def test_linear_probe_is_seeded_and_leaves_the_global_rng_alone():
    unit, _, labels = directions(64, seed=0)
    noisy = unit + 0.5 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    before = torch.get_rng_state()
    acc = evaluation.linear_probe(noisy, labels, unit, labels, num_classes=4, epochs=2)
    assert torch.equal(torch.get_rng_state(), before)
    assert evaluation.linear_probe(noisy, labels, unit, labels, num_classes=4, epochs=2) == acc


def knn_bank():
    """A query at e1 whose single nearest neighbour (s = 1) is class 1 and whose next 19
    (s = 0.95) are class 0; 30 more class-2 points are orthogonal to it."""
    near = F.normalize(torch.tensor([[0.95, math.sqrt(1 - 0.95 ** 2), 0.0]]), dim=1)
    bank = torch.cat([torch.tensor([[1.0, 0.0, 0.0]]), near.repeat(19, 1),
                      torch.tensor([[0.0, 0.0, 1.0]]).repeat(30, 1)])  # (50, 3)
    labels = torch.cat([torch.tensor([1]), torch.zeros(19, dtype=torch.long),
                        torch.full((30,), 2)])  # (50,)
    return bank, labels, torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0])


def test_knn_votes_over_k_neighbours():
    bank, labels, query, query_label = knn_bank()
    knn = evaluation.knn_accuracy
    assert knn(bank, labels, query, query_label, num_classes=3, k=20) == 100.0
    assert knn(bank, labels, query, query_label, num_classes=3, k=1) == 0.0
    assert paste_alone(knn)(bank, labels, query, query_label, num_classes=3, k=20) == 100.0


def test_knn_weights_votes_by_similarity():
    bank, labels, query, query_label = knn_bank()
    # k = 3: one class-1 vote at s = 1 against two class-0 votes at s = 0.95. At temperature
    # 0.01 the closer one weighs e^5 times more; at 10 the two outvote it.
    args = (bank, labels, query, query_label)
    assert evaluation.knn_accuracy(*args, num_classes=3, k=3, temperature=0.01) == 0.0
    assert evaluation.knn_accuracy(*args, num_classes=3, k=3, temperature=10.0) == 100.0


def test_knn_chunks_give_the_same_answer():
    train_unit, train_scaled, train_y = directions(120, seed=0)
    test_unit, _, test_y = directions(50, seed=1)
    noisy = test_unit + 0.8 * torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    whole = evaluation.knn_accuracy(train_scaled, train_y, noisy, test_y, num_classes=4, k=5)
    assert 50.0 < whole < 100.0  # noisy enough to matter
    assert evaluation.knn_accuracy(train_unit, train_y, noisy, test_y, num_classes=4, k=5,
                                   chunk=7) == whole


# ---- features ---------------------------------------------------------------------------------

@pytest.mark.parametrize("was_training", [True, False])
def test_extract_features_uses_running_statistics_and_changes_nothing(was_training):
    encoder = warmed_up(tiny_model(0)).encoder.train(was_training)
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    feats = evaluation.extract_features(encoder, images, mean=MEAN, std=STD, batch_size=4)
    assert encoder.training == was_training
    assert all(m.training == was_training for m in encoder.modules())
    assert all(torch.equal(v, before[k]) for k, v in encoder.state_dict().items())
    x = data.normalize(images, mean=MEAN, std=STD)
    with torch.no_grad():
        want = encoder.eval()(x)  # (6, D_h) with the running statistics
        batch_stats = encoder.train()(x)
    assert feats.shape == (6, encoder.feature_dim)
    assert torch.allclose(feats, want, atol=1e-5)
    assert not torch.allclose(feats, batch_stats, atol=1e-2)


# ---- Table 1 ---------------------------------------------------------------------------------

def test_table1_statistics_are_two_independent_views_through_the_eval_mode_model():
    model = warmed_up(tiny_model(0)).train()
    images = data.make_shapes(12, seed=0, image_size=16)[0]  # (12, 3, 16, 16)
    aug = data.augment_kwargs("shapes", 16)
    got = evaluation.table1_stats(model, images, augment_kwargs=aug, batch_size=64,
                                  generator=torch.Generator().manual_seed(3))
    assert model.training  # restored
    x, y = data.two_views(images, generator=torch.Generator().manual_seed(3), **aug)
    with torch.no_grad():
        _, u = model.eval()(x)  # (12, d)
        _, v = model(y)  # (12, d)
    want = theory.similarity_stats(u, v)
    assert got["count"] == 12
    for key in ("pos_mean", "pos_var", "neg_mean", "neg_var", "within_mean", "within_var"):
        assert got[key] == pytest.approx(want[key].item(), rel=1e-6, abs=1e-9), key
    assert got["pos_mean"] < 0.99  # one view against itself would give exactly 1
    json.dumps(got)  # plain numbers, for summary.json and metrics.jsonl


# ---- a run directory: checkpoint, --random-init, --plot -------------------------------------

RUN = dict(arch="resnet18", width=4, stem="cifar_s2", seed=0, data_seed=0, dataset="shapes",
           image_size=16, train_size=48, batch_size=16, loss="simclr", vrns_weight=0.0)


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


def make_run(path, epochs=3, **changes):
    """A run directory as train.py leaves it (ckpt.pt, metrics.jsonl), without training: the
    'trained' weights are a seed-123 init with warmed-up BatchNorm statistics."""
    run = dict(RUN, data_dir=str(path), **changes)
    path.mkdir()
    torch.manual_seed(123)
    model = warmed_up(models.ContrastiveModel(run["arch"], width=run["width"], stem=run["stem"]))
    torch.save({"format": evaluation.CKPT_FORMAT, "args": run, "step": 3 * epochs,
                "epochs_logged": epochs, "finished": True, "model": model.state_dict()},
               path / "ckpt.pt")
    with open(path / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(record(e, run)) + "\n" for e in range(1, epochs + 1))
    return path


def test_read_checkpoint(tmp_path):
    run_dir = make_run(tmp_path / "run")
    assert evaluation.read_checkpoint(str(run_dir))["args"]["width"] == 4
    assert evaluation.read_checkpoint(str(run_dir / "ckpt.pt"))["args"]["width"] == 4
    with pytest.raises(ValueError, match="no such checkpoint"):
        evaluation.read_checkpoint(str(tmp_path / "elsewhere"))
    whole = (run_dir / "ckpt.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(ValueError, match="cannot be read.*truncated"):
        evaluation.read_checkpoint(str(tmp_path / "cut.pt"))
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a checkpoint of train.py"):
        evaluation.read_checkpoint(str(tmp_path / "foreign.pt"))


def test_random_init_is_evaluated_without_the_trained_weights(tmp_path, monkeypatch):
    run_dir = make_run(tmp_path / "run", seed=7)
    trained = torch.load(run_dir / "ckpt.pt", weights_only=True)["model"]
    seen = []

    def fake_evaluate_run(model, run, *, seed, **kwargs):  # what eval.py would evaluate
        assert seed == 7  # the run's seed by default, as in train.py's final evaluation
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"linear_acc": 0.0, "knn_acc": 0.0, "table1_stats": {}}

    monkeypatch.setattr(evaluation, "evaluate_run", fake_evaluate_run)
    evaluation.main(["--ckpt", str(run_dir), "--random-init", "--device", "cpu"])
    evaluation.main(["--ckpt", str(run_dir / "ckpt.pt"), "--device", "cpu"])
    random_init, loaded = seen
    assert all(torch.equal(loaded[k], v) for k, v in trained.items())
    weights = [k for k, v in trained.items() if v.dim() > 1]  # convolutions and linear layers
    assert not any(torch.equal(random_init[k], trained[k]) for k in weights)
    assert not torch.equal(random_init["encoder.bn1.running_mean"],
                           trained["encoder.bn1.running_mean"])
    torch.manual_seed(7 + 1)  # train.py's baseline: the same untrained weights
    baseline = models.ContrastiveModel("resnet18", width=4, stem="cifar_s2").state_dict()
    assert all(torch.equal(random_init[k], v) for k, v in baseline.items())
    assert (run_dir / "eval_random_init.json").exists() and (run_dir / "eval.json").exists()


@pytest.mark.parametrize("argv,words", [
    (["--ckpt", "{tmp}/elsewhere"], "no such checkpoint"),
    (["--ckpt", "{run}", "--ckpt", "{run}"], "only with --plot"),
    (["--ckpt", "{run}", "--plot", "--random-init"], "leave out --random-init"),
    (["--ckpt", "{run}", "--probe-epochs", "0"], "--probe-epochs"),
    (["--ckpt", "{run}/ckpt.pt", "--plot"], "metrics.jsonl: no epoch record"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, words):
    run_dir = make_run(tmp_path / "run")
    (run_dir / "metrics.jsonl").write_text("")  # a run stopped before its first epoch ended
    argv = [a.format(tmp=tmp_path, run=run_dir) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        evaluation.main([*argv, "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


def test_metric_curves():
    records = [record(e, RUN) for e in (1, 2, 3)]
    curves = evaluation.metric_curves(records)
    assert curves["epoch"] == [1, 2, 3]
    assert curves["batch_loss"] == [4.0, 3.0, 2.0]
    assert curves["batch_vrns"] == pytest.approx([0.1, 0.05, 0.1 / 3])
    assert curves["tracked_neg_var"] == pytest.approx([0.1, 0.05, 0.1 / 3])
    assert curves["batch_pos_mean"] == pytest.approx([0.6, 0.7, 0.8])
    assert curves["theory"]["neg_optimum"] == -1 / 47
    assert curves["monitor_epoch"] == [] and curves["monitor_knn"] == []  # no monitor ran
    records[0]["monitor"] = {"knn_acc": 20.0, "images": 8}
    records[2]["monitor"] = {"knn_acc": 35.0, "images": 8}
    curves = evaluation.metric_curves(records)
    assert curves["monitor_epoch"] == [1, 3] and curves["monitor_knn"] == [20, 35]


@pytest.mark.filterwarnings("error::UserWarning")  # e.g. a legend without labelled lines
def test_plot_writes_both_figures_from_the_table1_protocol(tmp_path, capsys):
    base = make_run(tmp_path / "lam0")
    vrns = make_run(tmp_path / "lam1", epochs=2, vrns_weight=1.0)
    evaluation.main(["--ckpt", str(base), "--ckpt", str(vrns), "--plot", "--device", "cpu",
                     "--plot-dir", str(tmp_path / "figs"), "--bins", "40"])
    for name in ("similarities.png", "curves.png"):
        assert (tmp_path / "figs" / name).stat().st_size > 10_000
    assert "lam = 1" in capsys.readouterr().out
    evaluation.main(["--ckpt", str(base), "--plot", "--device", "cpu"])  # default: RUN/figures
    assert (base / "figures" / "similarities.png").exists()

    fig = evaluation.run_figure_data(str(base), bins=40, seed=5)
    count = RUN["train_size"]  # fewer than Table 1's 5,000
    assert sum(fig["pos_counts"]) == count and sum(fig["neg_counts"]) == count * (count - 1)
    centres = torch.linspace(-1, 1, 41)[:-1] + 1 / 40  # (40,) bins of width 0.05
    for kind in ("pos", "neg"):  # the histograms hold the pairs the statistics describe
        counts = torch.tensor(fig[f"{kind}_counts"], dtype=torch.float64)
        mean = (centres.double() @ counts / counts.sum()).item()
        assert mean == pytest.approx(fig["stats"][f"{kind}_mean"], abs=0.025), kind
    ckpt = evaluation.read_checkpoint(str(base))
    images = evaluation.table1_images("shapes", data_dir="", train_size=count)[0]
    want = evaluation.table1_stats(evaluation.model_of(ckpt), images,
                                   augment_kwargs=data.augment_kwargs("shapes", 16),
                                   generator=torch.Generator().manual_seed(5))
    assert fig["stats"] == pytest.approx(want)
    assert fig["curves"]["epoch"] == [1, 2, 3]


# ---- the GPU path: same answers there -------------------------------------------------------

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_evaluation_on_the_gpu_matches_the_cpu():
    _, train_scaled, train_y = directions(200, seed=0)
    _, test_scaled, test_y = directions(100, seed=1)
    kw = dict(num_classes=4, epochs=10, batch_size=16)
    cpu = evaluation.linear_probe(train_scaled, train_y, test_scaled, test_y, **kw)
    assert evaluation.linear_probe(train_scaled.cuda(), train_y, test_scaled, test_y, **kw) == cpu
    bank, labels, query, query_label = knn_bank()
    assert evaluation.knn_accuracy(bank.cuda(), labels, query, query_label, num_classes=3,
                                   k=20) == 100.0
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(300, 16, generator=g), torch.randn(300, 16, generator=g)
    on_gpu = theory.similarity_stats(u.cuda(), v.cuda())
    assert on_gpu["neg_var"].device.type == "cuda"
    for key, value in theory.similarity_stats(u, v).items():
        assert float(on_gpu[key]) == pytest.approx(float(value), rel=1e-9, abs=1e-12), key
    pos, neg = evaluation.similarity_histograms(u.double().cuda(), v.double().cuda(), bins=20,
                                                max_chunk=1000)
    want_pos, want_neg = evaluation.similarity_histograms(u.double(), v.double(), bins=20)
    assert torch.equal(pos.cpu(), want_pos) and torch.equal(neg.cpu(), want_neg)


def test_class_split_counts_and_moments_as_a_loop():
    """The negatives split by class against a loop over every ordered pair i != j, float64."""
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(2, 30, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 4, (30,), generator=g)
    un, vn = F.normalize(u, dim=1), F.normalize(v, dim=1)
    parts = {"same": [], "diff": []}
    for i in range(30):
        for j in range(30):
            if i != j:
                parts["same" if labels[i] == labels[j] else "diff"].append(float(un[i] @ vn[j]))
    got, pasted = evaluation.class_split_stats(u, v, labels), \
        paste_alone(evaluation.class_split_stats)(u, v, labels)
    for name, values in parts.items():
        values = torch.tensor(values, dtype=torch.float64)
        assert got[f"{name}_count"] == pasted[f"{name}_count"] == len(values)
        assert got[f"{name}_mean"].item() == pytest.approx(values.mean().item(), abs=1e-12)
        assert got[f"{name}_var"].item() == pytest.approx(values.var(unbiased=False).item(),
                                                          abs=1e-12)


def test_missing_dataset_files_name_the_command_that_fetches_them(tmp_path, capsys):
    run_dir = make_run(tmp_path / "run", dataset="cifar10")  # its data_dir holds no CIFAR files
    with pytest.raises(SystemExit) as exit_info:
        evaluation.main(["--ckpt", str(run_dir), "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "data_batch_1" in err and "python train.py --download" in err  # eval.py has no flag
    assert len(err.strip().splitlines()) == 1
