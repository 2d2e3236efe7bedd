"""train.py: what a step, an epoch's log, a flag and a resumed run must mean; smoke runs of the
script; bad input."""
import argparse
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import paste_alone
from syncs import count_syncs

import data
import eval as evaluation
import losses
import models
import theory
import train

LOAD_SPLITS = evaluation.load_splits
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 256 generated training and test images, a width-4 ResNet-18: a run takes about a second
TINY = ["--train-size", "256", "--test-size", "256", "--width", "4", "--batch-size", "32",
        "--epochs", "1", "--track-size", "64", "--monitor-size", "32", "--probe-epochs", "2",
        "--precision", "fp32", "--log-every", "4", "--threads", "1"]


def run_script(*argv, timeout=300):
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


class Stop(Exception):
    """Raised by a stand-in for contrastive_step once it has seen what it needs."""


def first_step_of(argv, monkeypatch, tmp_path):
    """The keyword arguments and views of the first contrastive_step that train.main(argv)
    takes, and the run's splits."""
    seen = {}

    def record(net, optimizer, x, y, **kw):
        seen.update(kw, net=net, x=x, y=y, threads=torch.get_num_threads())
        raise Stop

    monkeypatch.setattr(train, "contrastive_step", record)
    monkeypatch.setattr(evaluation, "load_splits",
                        lambda *a, **k: seen.setdefault("splits", LOAD_SPLITS(*a, **k)))
    with pytest.raises(Stop):
        train.main([*TINY, *argv, "--out-dir", str(tmp_path)])
    return seen


# ---- the step: loss + lam * L_VRNS, differentiated and applied --------------------------------

class Tiny(torch.nn.Module):
    """(B, 3, 2, 2) -> h (B, 12), z (B, 4): a network small enough to differentiate by hand."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(12, 4)

    def forward(self, x):
        h = x.flatten(1)
        return h, self.lin(h)


def vrns_by_loop(u, v, n):
    """Def. 5.7 written out: the mean over i != j of (u_i^T v_j + 1/(n-1))^2, unit u, v."""
    u, v = u / u.norm(dim=1, keepdim=True), v / v.norm(dim=1, keepdim=True)
    terms = [(u[i] @ v[j] + 1 / (n - 1)) ** 2 for i in range(len(u)) for j in range(len(v))
             if i != j]
    return sum(terms) / len(terms)


@pytest.mark.parametrize("lam", [0.0, 2.5])
def test_the_step_applies_the_gradient_of_loss_plus_lam_vrns(lam):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 6, 3, 2, 2, generator=g)
    torch.manual_seed(0)
    net = Tiny()
    before = [p.detach().clone() for p in net.parameters()]
    u, v = net.lin(x.flatten(1)), net.lin(y.flatten(1))
    total = losses.simclr_loss(u, v, temperature=0.5) + lam * vrns_by_loop(u, v, 50)
    grads = torch.autograd.grad(total, list(net.parameters()))
    step = train.contrastive_step(net, torch.optim.SGD(net.parameters(), lr=1.0), x, y,
                                  loss_fn=train.make_loss("simclr", temperature=0.5,
                                                          siglip_t=1, siglip_b=1,
                                                          within_view=False),
                                  vrns_fn=losses.vrns_loss, n=50, lam=lam)
    for p, p0, grad in zip(net.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), p0 - grad, rtol=0, atol=1e-6)
    assert step[1].item() == pytest.approx(vrns_by_loop(u, v, 50).item(), rel=1e-5)


def test_contrastive_step_pastes_alone_and_returns_the_batch_statistics():
    """The paper's step, copied alone: the same update as the module's, and its statistics are
    the loss, L_VRNS and the Def. 4.1 moments of the batch it trained on (before the update)."""
    x, y = torch.randn(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loss_fn = train.make_loss("simclr", temperature=0.5, siglip_t=10.0, siglip_b=10.0,
                              within_view=False)
    results = []
    for step in (train.contrastive_step, paste_alone(train.contrastive_step)):
        torch.manual_seed(0)
        model = models.ContrastiveModel("resnet18", width=4, stem="cifar_s2")
        with torch.no_grad():  # what the step sees: BatchNorm over both views, train mode
            u, v = model(torch.cat([x, y]))[1].chunk(2)  # (8, d) each
        torch.manual_seed(0)
        model = models.ContrastiveModel("resnet18", width=4, stem="cifar_s2")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        now = step(model, optimizer, x, y, loss_fn=loss_fn, vrns_fn=losses.vrns_loss, n=100,
                   lam=2.0)
        results.append((now, [p.detach().clone() for p in model.parameters()]))
        s = theory.similarity_stats(u, v)
        expected = [loss_fn(u, v), losses.vrns_loss(u, v, 100),
                    *(s[k] for k in ("pos_mean", "neg_mean", "neg_var"))]
        assert torch.allclose(now.double(), torch.stack(expected).double(), atol=1e-5)
    (now_a, params_a), (now_b, params_b) = results
    assert torch.equal(now_a, now_b) and all(map(torch.equal, params_a, params_b))


def test_a_training_step_makes_no_host_syncs():
    """Between logging steps the CPU never waits for the GPU: drawing the views, the forward
    pass, loss + L_VRNS, backward, AdamW and the batch statistics queue work without reading a
    value back or copying a constant over (counted on meta tensors)."""
    model = models.ContrastiveModel("resnet18", width=4, stem="cifar_s2")
    source = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    batches = data.batch_order(64, 16, epoch=0, seed=0, fixed=False)  # (4, 16)
    loss_fn = train.make_loss("simclr", temperature=0.5, siglip_t=10.0, siglip_b=10.0,
                              within_view=False)

    def two_steps(model, source, batches, generator):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        sums = torch.zeros(len(train.STEP_STATS), device=source.device)
        views = train.epoch_views(source, batches, rows=(0, 16), generator=generator, seed=0,
                                  aug=data.augment_kwargs("shapes"), workers=0,
                                  device=source.device)
        for step, (x, y) in zip(range(2), views):
            optimizer.param_groups[0]["lr"] = train.lr_at(step, total_steps=8, warmup_steps=2,
                                                          peak_lr=1e-3)
            sums += train.contrastive_step(model, optimizer, x, y, loss_fn=loss_fn,
                                           vrns_fn=losses.vrns_loss, n=64, lam=1.0)

    counts = count_syncs(two_steps, model, source, batches, torch.Generator().manual_seed(0),
                         fake_device="meta")
    assert not counts, counts


def test_lr_warmup_then_cosine():
    lr = [train.lr_at(s, total_steps=20, warmup_steps=4, peak_lr=1.0) for s in range(21)]
    assert lr[:4] == [0.25, 0.5, 0.75, 1.0]  # the first step already learns
    assert lr[4] == 1.0 and lr[12] == pytest.approx(0.5) and lr[20] == 0.0
    assert all(a >= b for a, b in zip(lr[4:], lr[5:]))  # the cosine never rises
    assert train.lr_at(0, total_steps=20, warmup_steps=0, peak_lr=1.0) == 1.0


# ---- every flag that changes the loss or the data reaches it ------------------------------------

U, V = torch.randn(2, 16, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("argv,expected", [
    (["--temperature", "0.7"], losses.simclr_loss(U, V, 0.7)),
    (["--loss", "dcl", "--temperature", "0.3"], losses.dcl_loss(U, V, 0.3)),
    (["--loss", "siglip", "--siglip-t", "3", "--siglip-b", "-2"],
     losses.siglip_loss(U, V, 3.0, -2.0)),
    (["--loss", "siglip", "--siglip-t", "3", "--siglip-b", "-2", "--within-view"],
     losses.siglip_loss(U, V, 3.0, -2.0, within_view=True)),
    (["--loss", "spectral", "--within-view"], losses.spectral_loss(U, V, within_view=True)),
])
def test_loss_flags_reach_the_loss(argv, expected, monkeypatch, tmp_path):
    seen = first_step_of(argv, monkeypatch, tmp_path)
    assert seen["loss_fn"](U, V).item() == pytest.approx(expected.item(), rel=1e-6)


def test_vrns_weight_and_n_reach_the_step(monkeypatch, tmp_path):
    seen = first_step_of(["--vrns-weight", "7", "--train-size", "96"], monkeypatch, tmp_path)
    assert seen["lam"] == 7.0 and seen["n"] == 96 and seen["vrns_fn"] is losses.vrns_loss


@pytest.mark.parametrize("stem,side", [("cifar", 32), ("cifar_s2", 16), ("imagenet", 8)])
def test_stem_flag_reaches_the_model(stem, side, monkeypatch, tmp_path):
    seen = first_step_of(["--stem", stem], monkeypatch, tmp_path)
    enc = seen["net"].encoder
    assert enc.maxpool(enc.conv1(seen["x"])).shape[-1] == side


@pytest.mark.parametrize("dataset,classes", [("shapes", 10), ("shapes100", 100)])
def test_dataset_flags_reach_the_data(dataset, classes, monkeypatch, tmp_path):
    seen = first_step_of(["--dataset", dataset, "--data-seed", "3"], monkeypatch, tmp_path)
    images, labels, C = data.load_dataset(dataset, "train", seed=3)
    assert seen["splits"]["classes"] == C == classes
    assert torch.equal(seen["splits"]["pretrain"], images[:256])
    assert torch.equal(seen["splits"]["test"][1], data.load_dataset(dataset, "test",
                                                                    seed=3)[1][:256])
    assert seen["x"].shape == (32, 3, 32, 32)


def test_seeds_share_the_generated_dataset(monkeypatch, tmp_path):
    """--seed varies the training only: the shapes are drawn from --data-seed."""
    a = first_step_of(["--seed", "0"], monkeypatch, tmp_path / "a")
    b = first_step_of(["--seed", "3"], monkeypatch, tmp_path / "b")
    assert torch.equal(a["splits"]["pretrain"], b["splits"]["pretrain"])
    assert not torch.equal(a["x"], b["x"])  # other views of the first batch


@pytest.mark.parametrize("load,threads", [(0.2, 2), (1.1, 1), (6.0, 1)])
def test_threads_are_the_cores_the_load_average_leaves_free(load, threads, monkeypatch,
                                                             tmp_path):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    assert first_step_of(["--threads", "0"], monkeypatch, tmp_path)["threads"] == threads


# ---- what an epoch's log means -----------------------------------------------------------------

def test_every_logged_figure_is_what_it_summarises(tmp_path, capsys):
    """Over 3 epochs: each epoch's batch means are the means of the per-step figures printed
    (--log-every 1); the last epoch's tracked statistics and kNN monitor are those of the saved
    model on the tracked and monitor images; the lr is the schedule's at the epoch's last step."""
    out = tmp_path / "run"
    train.main([*TINY, "--epochs", "3", "--log-every", "1", "--out-dir", str(out)])
    printed = {}
    for line in capsys.readouterr().out.splitlines():
        found = re.match(r"epoch (\d+)/3 step \d+/24 \| (.*?) \| lr", line)
        if found:
            values = dict(zip(found[2].split()[::2], map(float, found[2].split()[1::2])))
            printed.setdefault(int(found[1]), []).append(values)
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3] and sorted(printed) == [1, 2, 3]
    for record in records:
        steps = printed[record["epoch"]]
        assert len(steps) == 8
        for key in train.STEP_STATS:
            assert record["batch"][key] == pytest.approx(sum(s[key] for s in steps) / 8,
                                                         abs=1e-4), (record["epoch"], key)
        assert record["lr"] == pytest.approx(train.lr_at(
            8 * record["epoch"] - 1, total_steps=24, warmup_steps=16, peak_lr=1e-3))
    ckpt = torch.load(out / "ckpt.pt")
    model = evaluation.model_of(ckpt)
    splits = evaluation.load_splits(ckpt["args"], data_dir="data")
    aug = data.augment_kwargs("shapes")
    tracked = evaluation.table1_stats(model, splits["tracked"], augment_kwargs=aug,
                                      generator=torch.Generator().manual_seed(1))
    assert tracked["count"] == 64
    for key, value in tracked.items():
        assert records[-1]["tracked"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    knn = evaluation.knn_monitor(model.encoder, *splits["monitor"], num_classes=10,
                                 mean=aug["mean"], std=aug["std"])
    assert records[-1]["monitor"] == {"knn_acc": knn, "images": 32}
    assert records[-1]["theory"]["neg_optimum"] == pytest.approx(-1 / 255)
    # BatchNorm trained in train mode: its running statistics saw every step
    assert ckpt["model"]["encoder.bn1.num_batches_tracked"] == 24


def test_summary_holds_the_evaluation_of_the_trained_and_untrained_encoder(tmp_path):
    out = tmp_path / "run"
    train.main([*TINY, "--out-dir", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    ckpt = torch.load(out / "ckpt.pt")
    assert ckpt["finished"] and ckpt["epoch"] == 1
    splits = evaluation.load_splits(ckpt["args"], data_dir="data")
    kw = dict(augment_kwargs=data.augment_kwargs("shapes"), probe_epochs=2, seed=0)
    expected = evaluation.evaluate(evaluation.model_of(ckpt), splits, **kw)
    baseline = evaluation.evaluate(evaluation.model_of(ckpt, random_init=True), splits, **kw)
    for got, want in ((summary, expected), (summary["random_init"], baseline)):
        for key in ("linear_acc", "linear_lbfgs_acc", "knn_acc"):
            assert got[key] == pytest.approx(want[key], abs=1e-6), key
        assert got["table1_stats"]["neg_var"] == pytest.approx(
            want["table1_stats"]["neg_var"], rel=1e-5)
    assert summary["random_init"]["table1_stats"]["neg_mean"] > 0.5  # near-parallel features
    assert summary["n_train"] == 256 and summary["threads"] == 1
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", summary["commit"])  # the code that ran


# ---- smoke runs of the scripts ------------------------------------------------------------------

def test_train_then_eval_then_theory_scripts(tmp_path):
    out = tmp_path / "run"
    r = run_script("train.py", *TINY, "--out-dir", str(out))
    assert r.returncode == 0, r.stderr
    assert "lr = 0.001 (adamw, 0.008 per 256 images, linear scaling), warmup 16 steps" in r.stdout
    assert "linear probe" in r.stdout and "step 8/8" in r.stdout
    r = run_script("eval.py", "--ckpt", str(out), "--probe-epochs", "2")
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "eval.json").read_text())
    assert result["table1_stats"]["count"] == 256
    summary = json.loads((out / "summary.json").read_text())
    assert result["knn_acc"] == summary["knn_acc"]  # the same model, splits and seed
    r = run_script("theory.py", "--run", str(out))
    assert r.returncode == 0 and "Var[s_neg]" in r.stdout, r.stderr


@pytest.mark.parametrize("extra", [
    ["--loss", "infonce"], ["--loss", "dhel", "--fixed-batches"],
    ["--loss", "simclr", "--vrns-weight", "30", "--optimizer", "sgd"],
])
def test_losses_train(tmp_path, extra):
    train.main([*TINY, "--probe-epochs", "1", "--out-dir", str(tmp_path), *extra])
    (record,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert all(math.isfinite(v) for v in record["batch"].values())


def test_sqrt_lr_scaling(tmp_path):
    """--lr-scaling sqrt: 8e-3 per 256 images at m = 64 is a peak of 8e-3 * sqrt(64 / 256)."""
    train.main([*TINY, "--batch-size", "64", "--warmup-epochs", "0", "--epochs", "1",
                "--lr-scaling", "sqrt", "--out-dir", str(tmp_path)])
    (record,) = read_jsonl(tmp_path / "metrics.jsonl")  # 4 steps, no warmup, cosine
    assert record["lr"] == pytest.approx(4e-3 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))  # 3 of 4


def test_imagefolder_tree_trains_and_evaluates(tmp_path):
    """A tiny ImageFolder tree (3 classes of PNGs) streamed through DataLoader workers."""
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for split, count in (("train", 24), ("val", 6)):
        for c in range(3):
            os.makedirs(tmp_path / split / f"class{c}")
            for i in range(count // 3):
                pixels = torch.randint(0, 256, (40, 48, 3), generator=g, dtype=torch.uint8)
                Image.fromarray(pixels.numpy()).save(tmp_path / split / f"class{c}" / f"{i}.png")
    out = tmp_path / "run"
    train.main(["--dataset", "imagefolder", "--data-dir", str(tmp_path), "--image-size", "32",
                "--width", "4", "--batch-size", "8", "--epochs", "1", "--workers", "0",
                "--track-size", "8", "--monitor-size", "6", "--probe-epochs", "1",
                "--precision", "fp32", "--threads", "1", "--out-dir", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_train"] == 24 and summary["table1_stats"]["count"] == 24
    (record,) = read_jsonl(out / "metrics.jsonl")
    assert record["tracked"]["count"] == 8 and record["monitor"]["images"] == 6
    with pytest.raises(SystemExit) as e:
        train.main(["--dataset", "imagefolder", "--data-dir", str(tmp_path / "missing")])
    assert e.value.code == 2


# ---- faults: Ctrl-C loses at most the epoch, resume is exact --------------------------------

@pytest.mark.parametrize("where,count", [("contrastive_step", 12), ("save_checkpoint", 2)])
def test_ctrl_c_loses_at_most_the_epoch_and_resume_is_exact(where, count, tmp_path, monkeypatch):
    """Ctrl-C in the middle of the second epoch, or while its checkpoint is being written
    (after its metrics line): the run continues from the first epoch's checkpoint and ends
    where an uninterrupted run ends, with the same log."""
    argv = [*TINY, "--epochs", "3"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    train.main([*argv, "--out-dir", str(full)])
    fn, calls = getattr(train, where), []

    def interrupted(*a, **kw):
        calls.append(1)
        if len(calls) == count:
            raise KeyboardInterrupt
        return fn(*a, **kw)

    monkeypatch.setattr(train, where, interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.main([*argv, "--out-dir", str(cut)])
    monkeypatch.undo()
    ckpt = torch.load(cut / "ckpt.pt")
    assert ckpt["epoch"] == 1 and not ckpt["finished"] and not (cut / "summary.json").exists()
    assert ckpt["train_wall_s"] == read_jsonl(cut / "metrics.jsonl")[0]["elapsed_s"] > 0
    torch.save({**ckpt, "train_wall_s": 1000.0}, cut / "ckpt.pt")  # as if epoch 1 took 1,000 s
    train.main(["--resume", str(cut), "--log-every", "2"])
    summary = json.loads((cut / "summary.json").read_text())  # the times count both parts
    assert [r["elapsed_s"] > 1000 for r in read_jsonl(cut / "metrics.jsonl")] == [0, 1, 1]
    assert summary["total_wall_s"] > summary["train_wall_s"] > 1000
    a, b = torch.load(full / "ckpt.pt"), torch.load(cut / "ckpt.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_jsonl(
        full / "metrics.jsonl")] == [{k: v for k, v in r.items() if k != "elapsed_s"}
                                     for r in read_jsonl(cut / "metrics.jsonl")]


def test_a_crash_while_saving_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    train.main([*TINY, "--out-dir", str(tmp_path)])
    before = (tmp_path / "ckpt.pt").read_bytes()

    def crash(obj, path):
        with open(path, "wb") as f:
            f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    args = torch.load(tmp_path / "ckpt.pt")["args"]
    with pytest.raises(KeyboardInterrupt):
        train.save_checkpoint(argparse.Namespace(**args),
                              torch.nn.Linear(1, 1), torch.optim.SGD([torch.zeros(1)], lr=1), 2)
    assert (tmp_path / "ckpt.pt").read_bytes() == before


def test_non_finite_loss_stops_and_keeps_the_checkpoint(tmp_path):
    with pytest.raises(SystemExit) as e:
        train.main([*TINY, "--epochs", "2", "--optimizer", "sgd", "--lr", "1e30",
                    "--warmup-epochs", "0", "--out-dir", str(tmp_path)])
    assert "non-finite loss at" in str(e.value.code) and "lr too high" in str(e.value.code)
    assert not (tmp_path / "summary.json").exists()


# ---- bad input: a clear line naming the flag, exit status 2, no traceback ---------------------

@pytest.mark.parametrize("argv,words", [
    (["--temperature", "0"], "--temperature: must be a finite number > 0"),
    (["--temperature", "nan"], "--temperature: must be a finite number"),
    (["--siglip-b", "inf"], "--siglip-b: must be finite"),
    (["--lr", "-1"], "--lr"),
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "1"], "--batch-size"),
    (["--batch-size", "100000"], "larger than the training set"),
    (["--train-size", "6000"], "--train-size 6000 exceeds"),
    (["--vrns-weight", "-1"], "--vrns-weight"),
    (["--within-view"], "--within-view"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "--download"),
    (["--resume", "/nonexistent/run"], "--resume"),
    (["--seed", "-1"], "--seed"),
    (["--threads", "-2"], "--threads"),
    (["--loss", "nope"], "invalid choice"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"],
     "--device"),
])
def test_bad_flags_fail_fast(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert words in err[-1] and len(err) <= 2 and err[0].startswith("usage:")


def test_the_script_exits_2_without_a_traceback():
    r = run_script("train.py", "--epochs", "-3")
    assert r.returncode == 2 and "--epochs" in r.stderr and "Traceback" not in r.stderr


def test_refuses_to_clobber_a_run_and_to_redo_a_finished_one(tmp_path, capsys):
    train.main([*TINY, "--out-dir", str(tmp_path)])
    before = (tmp_path / "summary.json").read_text()
    with pytest.raises(SystemExit) as e:
        train.main([*TINY, "--out-dir", str(tmp_path)])
    assert e.value.code == 2 and "already holds a run" in capsys.readouterr().err
    train.main(["--resume", str(tmp_path)])
    assert "holds a finished run" in capsys.readouterr().out
    assert (tmp_path / "summary.json").read_text() == before
    (tmp_path / "summary.json").unlink()  # lost after training: --resume evaluates again
    train.main(["--resume", str(tmp_path)])
    assert json.loads((tmp_path / "summary.json").read_text())["knn_acc"] == json.loads(
        before)["knn_acc"]


def test_resume_rejects_bad_checkpoints_and_changed_flags(tmp_path, capsys):
    (tmp_path / "ckpt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as e:
        train.main(["--resume", str(tmp_path)])
    assert e.value.code == 2 and "cannot read a checkpoint" in capsys.readouterr().err
    torch.save({"model": {}}, tmp_path / "ckpt.pt")
    with pytest.raises(SystemExit):
        train.main(["--resume", str(tmp_path)])
    assert "give a run directory of train.py" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--resume", str(tmp_path), "--temperature", "0.1"])
    assert "drop --temperature" in capsys.readouterr().err


def test_the_readmes_step_runs_and_its_statistics_describe_one_batch():
    """The README's "In your own code" example, run as printed. L_VRNS is the mean squared
    distance of the negatives from -1/(n-1), so it must equal Var[s_neg] + (E[s_neg] +
    1/(n-1))^2 of the same batch: the logged statistics and the term saw the same embeddings."""
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    step = [b for b in blocks if "train.contrastive_step(" in b]
    assert len(step) == 1, "the README should show contrastive_step in one python block"
    scope = {}
    exec(step[0], scope)
    n = int(re.search(r"\bn=(\d+)", step[0]).group(1))
    assert scope["stats"].shape == (5,) and math.isfinite(scope["loss"])
    assert scope["vrns"] == pytest.approx(
        scope["neg_var"] + (scope["neg_mean"] + 1 / (n - 1)) ** 2, rel=1e-4)
