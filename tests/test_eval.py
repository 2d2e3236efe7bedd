"""eval.py on data built so that a wrong evaluation gives a different answer: the probe on
directions only, the kNN vote over k neighbours, features in eval mode, the Table 1 statistics
on two independent views, the random-init baseline without the trained weights; each probe and
the kNN against a slow reference; the splits of a run and the command line. Tiny models."""
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


def test_probe_scores_the_test_features_not_the_training_ones(monkeypatch):
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
    splits = dict(train=(train_f, train_y), test=(test_f, test_y), pairs=(pairs, None), classes=4)
    monkeypatch.setattr(evaluation, "split_features", lambda encoder, split, **kw: split)
    result = evaluation.evaluate(model, splits, augment_kwargs=data.augment_kwargs("shapes"))
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


# ---- each probe and the kNN against a slow reference ------------------------------------------

def tangled(count, seed):
    """8-D features of 3 classes that overlap, so that a classifier has many close calls."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 3
    return torch.randn(count, 8, generator=g) + 0.8 * F.one_hot(labels, 8).float(), labels


# Each reference below labels 2,000 test points by its own predictions, so the function under
# test scores 100 % only if it predicts every one of them as the reference does: a change to
# the classifier (a step, a constant, a neighbour) moves some close call and the score with it.
QUERIES = torch.randn(2000, 8, generator=torch.Generator().manual_seed(9))


def test_sgd_probe_is_the_papers_protocol_written_out():
    """SGD on normalised features: the same seeded init and batch order, momentum 0.9, a cosine
    lr per step, written as plain loops."""
    (x, y), epochs, lr, B = tangled(60, 0), 3, 0.1, 16
    g = torch.Generator().manual_seed(5)
    xn = x / x.norm(dim=1, keepdim=True)
    W, b = torch.randn(3, 8, generator=g) * 0.01, torch.zeros(3)
    mW, mb, t, T = torch.zeros_like(W), torch.zeros_like(b), 0, epochs * math.ceil(60 / B)
    for _ in range(epochs):
        perm = torch.randperm(60, generator=g)
        for start in range(0, 60, B):
            i = perm[start:start + B]
            p = torch.softmax(xn[i] @ W.T + b, 1) - F.one_hot(y[i], 3)  # dloss/dlogits * B
            mW, mb = 0.9 * mW + p.T @ xn[i] / len(i), 0.9 * mb + p.mean(0)
            step = lr * 0.5 * (1 + math.cos(math.pi * t / T))
            W, b, t = W - step * mW, b - step * mb, t + 1
    want = (F.normalize(QUERIES, dim=1) @ W.T + b).argmax(1)
    assert evaluation.linear_probe(x * 3, y, QUERIES, want, num_classes=3, epochs=epochs, lr=lr,
                                   batch_size=B, seed=5) == 100.0


def test_lbfgs_probe_reaches_the_minimum_of_its_objective():
    """The same regularised cross-entropy minimised by 20,000 plain gradient steps in float64."""
    x, y = tangled(60, 0)
    xn = F.normalize(x.double(), dim=1)
    W, b = torch.zeros(3, 8, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for _ in range(20000):
        p = torch.softmax(xn @ W.T + b, 1) - F.one_hot(y, 3)
        W, b = W - 2.0 * (p.T @ xn / 60 + 0.1 * W), b - 2.0 * p.mean(0)
    want = (F.normalize(QUERIES.double(), dim=1) @ W.T + b).argmax(1)
    # float32 features and a float32 fit: 1 of the 2,000 close calls differs from float64
    assert evaluation.linear_probe_lbfgs(x, y, QUERIES, want, num_classes=3,
                                         weight_decay=0.1) >= 99.9


def test_knn_is_a_vote_of_the_k_nearest_written_out():
    bank, labels = tangled(50, 0)
    want = []
    for q in QUERIES[:400]:
        sims = [(F.cosine_similarity(q, f, dim=0).item(), int(c)) for f, c in zip(bank, labels)]
        votes = [0.0] * 3
        for s, c in sorted(sims, reverse=True)[:7]:
            votes[c] += math.exp(s / 0.1)
        want.append(max(range(3), key=votes.__getitem__))
    assert evaluation.knn_accuracy(bank, labels, QUERIES[:400], torch.tensor(want),
                                   num_classes=3, k=7, chunk=64) == 100.0


# ---- a run: its splits, the baseline, the command line -----------------------------------------

RUN = dict(arch="resnet18", width=4, stem="cifar_s2", seed=7, data_seed=0, dataset="shapes",
           image_size=16, train_size=48, test_size=40, track_size=16, monitor_size=12,
           batch_size=16, loss="simclr", vrns_weight=0.0, workers=0)


def make_run(path, **changes):
    """A run directory as train.py leaves it (ckpt.pt), without training: the 'trained' weights
    are a seed-123 init with warmed-up BatchNorm statistics."""
    run = dict(RUN, data_dir=str(path), **changes)
    path.mkdir()
    torch.manual_seed(123)
    model = warmed_up(models.ContrastiveModel(run["arch"], width=run["width"], stem=run["stem"]))
    torch.save({"args": run, "epoch": 3, "finished": True, "model": model.state_dict()},
               path / "ckpt.pt")
    return path


def test_the_splits_of_a_run():
    splits = evaluation.load_splits(RUN, data_dir="unused")
    train_x, train_y, C = data.load_dataset("shapes", "train", seed=0)
    test_x, test_y, _ = data.load_dataset("shapes", "test", seed=0)
    assert C == splits["classes"] == 10
    assert torch.equal(splits["pretrain"], train_x[:48])
    assert torch.equal(splits["train"][0], train_x[:48])
    assert torch.equal(splits["train"][1], train_y[:48])
    assert torch.equal(splits["test"][0], test_x[:40]) and torch.equal(splits["test"][1],
                                                                       test_y[:40])
    assert torch.equal(splits["pairs"][0], train_x[:48])  # Table 1: the first <= 5,000
    tracked = torch.randperm(48, generator=torch.Generator().manual_seed(7))[:16]
    assert torch.equal(splits["tracked"], train_x[tracked])
    bank, bank_y, queries, query_y = splits["monitor"]
    assert len(bank) == len(queries) == 12
    for images, labels, (x, y) in ((bank, bank_y, splits["train"]),
                                   (queries, query_y, splits["test"])):
        for image, label in zip(images, labels):  # each a labelled image of its split
            (i,) = [i for i in range(len(x)) if torch.equal(x[i], image)]
            assert y[i] == label
    with pytest.raises(ValueError, match="--train-size 6000 exceeds"):
        evaluation.load_splits(dict(RUN, train_size=6000), data_dir="unused")


def test_the_baseline_is_evaluated_without_the_trained_weights(tmp_path, monkeypatch):
    """eval.py evaluates the checkpoint's weights, then an untrained model of the same
    architecture seeded as train.py's baseline (the run's seed + 1), on the same splits."""
    run_dir = make_run(tmp_path / "run")
    trained = torch.load(run_dir / "ckpt.pt")["model"]
    seen = []

    def fake_evaluate(model, splits, *, seed, **kwargs):  # what eval.py would evaluate
        assert seed == 7  # the run's seed by default, as in train.py's final evaluation
        assert len(splits["pretrain"]) == 48 and len(splits["test"][0]) == 40
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"linear_acc": 0.0, "linear_lbfgs_acc": 0.0, "knn_acc": 0.0,
                "table1_stats": {"pos_mean": 1.0, "neg_mean": 0.0, "neg_var": 0.0, "count": 9}}

    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    evaluation.main(["--ckpt", str(run_dir / "ckpt.pt"), "--device", "cpu"])
    loaded, random_init = seen
    assert all(torch.equal(loaded[k], v) for k, v in trained.items())
    weights = [k for k, v in trained.items() if v.dim() > 1]  # convolutions and linear layers
    assert not any(torch.equal(random_init[k], trained[k]) for k in weights)
    torch.manual_seed(7 + 1)  # train.py's baseline: the same untrained weights
    baseline = models.ContrastiveModel("resnet18", width=4, stem="cifar_s2").state_dict()
    assert all(torch.equal(random_init[k], v) for k, v in baseline.items())
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["theory_rows"][0]["predicted"] == pytest.approx(-1 / 47)  # n = 48


@pytest.mark.parametrize("argv,words", [
    (["--ckpt", "{tmp}/elsewhere"], "cannot read a train.py checkpoint"),
    (["--ckpt", "{tmp}/cut.pt"], "cannot read a train.py checkpoint"),
    (["--ckpt", "{run}", "--probe-epochs", "0"], "--probe-epochs"),
])
def test_bad_input_is_a_clear_line_and_exit_2(tmp_path, capsys, argv, words):
    run_dir = make_run(tmp_path / "run")
    whole = (run_dir / "ckpt.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[:len(whole) // 2])  # a truncated checkpoint
    argv = [a.format(tmp=tmp_path, run=run_dir) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        evaluation.main([*argv, "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert words in err[-1] and len(err) == 2 and "Traceback" not in "".join(err)


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


def test_missing_dataset_files_say_how_to_get_them(tmp_path, capsys):
    run_dir = make_run(tmp_path / "run", dataset="cifar10")  # its data_dir holds no CIFAR files
    with pytest.raises(SystemExit) as exit_info:
        evaluation.main(["--ckpt", str(run_dir), "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--download" in err[-1] and len(err) == 2
