"""train.py and eval.py end to end on a tiny budget: smoke runs, bad input, exact resume."""
import json
import math
import os
import re
import signal
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


# ---- smoke runs --------------------------------------------------------------------------------

def test_train_then_eval_scripts(tmp_path, capsys):
    out = tmp_path / "run"
    r = run_script("train.py", *TINY, "--log-every", "1", "--out-dir", str(out))
    assert r.returncode == 0, r.stderr
    assert "linear probe" in r.stdout and "step 8/8" in r.stdout
    # what the run means. The lr: 8e-3 per 256 images at m = 32 is a peak of 1e-3, warmup 2
    # epochs = 16 steps, so the 8th and last step (index 7) ran at 1e-3 * 8 / 16.
    assert "lr = 0.001 (adamw, 0.008 per 256 images, linear scaling), warmup 16 steps" in r.stdout
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(5e-4)
    # BatchNorm trained in train mode: its running statistics saw every step
    assert ckpt["model"]["encoder.bn1.num_batches_tracked"] == 8
    assert ckpt["model"]["projector.1.num_batches_tracked"] == 8
    # the epoch's batch figures are the means of the 8 steps' figures printed at --log-every 1
    steps = [line for line in r.stdout.splitlines() if line.startswith("epoch 1/1 step")]
    losses_printed = [float(line.split("| loss ")[1].split()[0]) for line in steps]
    assert len(losses_printed) == 8
    summary = json.loads((out / "summary.json").read_text())
    for key in ("linear_acc", "knn_acc", "random_init", "theory_rows", "args", "threads",
                "train_wall_s", "versions"):
        assert key in summary
    assert summary["threads"] == json.loads((out / "args.json").read_text())["threads"] == 1
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", summary["commit"])  # the code that ran
    # the untrained baseline is evaluated with its own weights, not the trained ones
    assert summary["random_init"]["table1_stats"] != summary["table1_stats"]
    assert summary["random_init"]["table1_stats"]["neg_mean"] > 0.5  # near-parallel features
    (record,) = read_jsonl(out / "metrics.jsonl")
    assert record["batch"]["loss"] == pytest.approx(sum(losses_printed) / 8, abs=1e-4)
    assert record["lr"] == pytest.approx(5e-4)
    assert 0 <= record["monitor"]["knn_acc"] <= 100
    assert record["epoch"] == 1 and -1 <= record["tracked"]["neg_mean"] <= 1
    assert record["tracked"]["count"] == 64
    assert record["theory"]["neg_optimum"] == pytest.approx(-1 / 255)
    assert record["batch"]["vrns"] > 0  # logged at lam = 0 too

    r = run_script("eval.py", "--ckpt", str(out), "--probe-epochs", "2")
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "eval.json").read_text())
    assert 0 <= result["linear_acc"] <= 100 and result["table1_stats"]["count"] == 256
    r = run_script("theory.py", "--run", str(out))
    assert r.returncode == 0, r.stderr
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as e:
            evaluation.main(["--ckpt", str(out), "--device", "cuda"])
        assert e.value.code == 2 and "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [
    ["--loss", "infonce"], ["--loss", "dcl", "--vrns-weight", "30"],
    ["--loss", "dhel", "--fixed-batches"], ["--loss", "siglip"],
    ["--loss", "siglip", "--within-view", "--vrns-weight", "1"],
    ["--loss", "spectral", "--within-view", "--optimizer", "sgd"],
    ["--loss", "simclr", "--vrns-weight", "30", "--fixed-batches", "--optimizer", "sgd"],
])
def test_every_loss_trains(tmp_path, extra):
    train.main([*TINY, "--probe-epochs", "1", "--out-dir", str(tmp_path), *extra])
    (record,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert all(torch.isfinite(torch.tensor(v)) for v in record["batch"].values())
    assert record["batch"]["vrns"] > 0


def test_sqrt_lr_scaling(tmp_path):
    """--lr-scaling sqrt: 8e-3 per 256 images at m = 64 is a peak of 8e-3 * sqrt(64 / 256)."""
    train.main([*TINY, "--batch-size", "64", "--warmup-epochs", "0", "--epochs", "1",
                "--lr-scaling", "sqrt", "--out-dir", str(tmp_path)])
    (record,) = read_jsonl(tmp_path / "metrics.jsonl")  # 4 steps, no warmup, cosine
    assert record["lr"] == pytest.approx(4e-3 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))  # 3 of 4


# ---- bad input: one line naming the flag, exit status 2, no traceback -------------------------

@pytest.mark.parametrize("argv,words", [
    (["--temperature", "0"], "--temperature"),
    (["--temperature", "nan"], "--temperature must be a finite number"),
    (["--siglip-b", "inf"], "--siglip-b must be a finite number"),
    (["--lr", "-1"], "--lr"),
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "1"], "--batch-size"),
    (["--batch-size", "100000"], "larger than the training set"),
    (["--vrns-weight", "-1"], "--vrns-weight"),
    (["--within-view"], "--within-view"),
    (["--dataset", "cifar10", "--data-dir", "/nonexistent"], "--download"),
    (["--resume", "/nonexistent/run"], "no such"),
    (["--seed", "-1"], "--seed"),
    (["--threads", "-2"], "--threads"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"],
     "--device"),
])
def test_bad_flags_fail_fast(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1


def test_unknown_choice_and_script_exit_status(capsys):
    r = run_script("train.py", "--epochs", "-3")  # the script's own exit status
    assert r.returncode == 2 and "--epochs" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(SystemExit) as e:
        train.main(["--loss", "nope"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_refuses_to_clobber_a_run(tmp_path, capsys):
    train.main([*TINY, "--out-dir", str(tmp_path)])
    before = (tmp_path / "summary.json").read_text()
    with pytest.raises(SystemExit) as e:
        train.main([*TINY, "--out-dir", str(tmp_path)])
    assert e.value.code == 2 and "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "summary.json").read_text() == before
    train.main(["--resume", str(tmp_path)])  # the checkpoint says the run finished
    assert "holds a finished run" in capsys.readouterr().out
    assert (tmp_path / "summary.json").read_text() == before


def test_resume_rejects_bad_checkpoints(tmp_path, capsys):
    (tmp_path / "ckpt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit):
        train.main(["--resume", str(tmp_path)])
    err = capsys.readouterr().err
    assert "--resume" in err and len(err.strip().splitlines()) == 1
    torch.save({"model": {}}, tmp_path / "ckpt.pt")
    with pytest.raises(SystemExit):
        train.main(["--resume", str(tmp_path)])
    err = capsys.readouterr().err
    assert "train.py" in err and len(err.strip().splitlines()) == 1


def test_resume_rejects_conflicting_flags(tmp_path, capsys):
    train.main([*TINY, "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        train.main(["--resume", str(tmp_path), "--temperature", "0.1"])
    err = capsys.readouterr().err
    assert "--temperature 0.1 (run used 0.2)" in err


# ---- faults: Ctrl-C loses nothing and resume is exact -------------------------------------------

def model_weights(run_dir):
    return torch.load(os.path.join(run_dir, "ckpt.pt"), weights_only=True)["model"]


def comparable(records):
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in records]


def test_interrupt_and_resume_is_bit_identical(tmp_path):
    argv = [*TINY, "--epochs", "3", "--log-every", "1", "--ckpt-every", "3"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    train.main([*argv, "--out-dir", str(full)])

    proc = subprocess.Popen([sys.executable, "train.py", *argv, "--out-dir", str(cut)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # Ctrl-C in the middle of the second epoch
        if "step 11/24" in line:
            proc.send_signal(signal.SIGINT)
            break
    proc.stdout.read()
    assert proc.wait(timeout=120) == 130, proc.stderr.read()
    ckpt = torch.load(cut / "ckpt.pt", weights_only=True)
    assert 11 <= ckpt["step"] < 24 and not ckpt["finished"]
    assert not (cut / "summary.json").exists()

    r = run_script("train.py", "--resume", str(cut))
    assert r.returncode == 0, r.stderr
    for key, value in model_weights(full).items():
        assert torch.equal(value, model_weights(cut)[key]), key
    assert comparable(read_jsonl(full / "metrics.jsonl")) == \
        comparable(read_jsonl(cut / "metrics.jsonl"))
    summary_full = json.loads((full / "summary.json").read_text())
    summary_cut = json.loads((cut / "summary.json").read_text())
    assert summary_full["linear_acc"] == summary_cut["linear_acc"]


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train.main([*TINY, "--epochs", "2", "--optimizer", "sgd", "--lr", "1e30",
                    "--warmup-epochs", "0", "--out-dir", str(tmp_path)])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "non-finite loss at step" in err and "lr too high" in err


def test_atomic_save_survives_a_crash_mid_write(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    evaluation.atomic_save({"step": 1}, path)

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        evaluation.atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}


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
                "--track-size", "8", "--probe-epochs", "1", "--precision", "fp32",
                "--threads", "1",
                "--out-dir", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_train"] == 24 and summary["table1_stats"]["count"] == 24
    with pytest.raises(SystemExit) as e:
        train.main(["--dataset", "imagefolder", "--data-dir", str(tmp_path / "missing")])
    assert e.value.code == 2


# ---- the schedule, the data, the thread count --------------------------------------------------

def test_lr_warmup_then_cosine():
    lr = [train.lr_at(s, total_steps=20, warmup_steps=4, peak_lr=1.0) for s in range(21)]
    assert lr[:4] == [0.25, 0.5, 0.75, 1.0]  # the first step already learns
    assert lr[4] == 1.0 and lr[12] == pytest.approx(0.5) and lr[20] == 0.0
    assert all(a >= b for a, b in zip(lr[4:], lr[5:]))  # the cosine never rises
    assert train.lr_at(0, total_steps=20, warmup_steps=0, peak_lr=1.0) == 1.0


def test_seeds_share_the_generated_dataset():
    """--seed varies the training only: the shapes are drawn from --data-seed."""
    def images(*argv):
        args, _ = train.parse_flags(["--train-size", "64", "--batch-size", "32", *argv])
        return train.training_images(args, torch.device("cpu"))[0]
    assert torch.equal(images("--seed", "0"), images("--seed", "3"))
    assert not torch.equal(images("--data-seed", "0"), images("--data-seed", "1"))


def test_resume_keeps_the_thread_count(tmp_path, capsys):
    train.main([*TINY, "--threads", "2", "--out-dir", str(tmp_path)])
    assert json.loads((tmp_path / "summary.json").read_text())["threads"] == 2
    with pytest.raises(SystemExit):
        train.main(["--resume", str(tmp_path), "--threads", "1"])
    assert "--threads 1 (run used 2)" in capsys.readouterr().err


def test_resume_on_another_device_type(tmp_path, capsys):
    """A checkpoint written on a GPU resumes on the CPU: the optimiser state moves, the views
    come from the CPU generator, and the run says it is no longer bit-identical."""
    argv = [*TINY, "--epochs", "2", "--out-dir", str(tmp_path)]
    train.main(argv)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    ckpt.update(step=8, epochs_logged=1, finished=False, device="cuda")
    evaluation.atomic_save(ckpt, str(tmp_path / "ckpt.pt"))
    (tmp_path / "summary.json").unlink()
    train.main(["--resume", str(tmp_path)])
    err = capsys.readouterr().err
    assert "resuming a cuda run on cpu" in err and "reproducible" in err
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 2
    assert json.loads((tmp_path / "summary.json").read_text())["n_train"] == 256


def test_a_training_step_makes_no_host_syncs():
    """Between logging steps the CPU never waits for the GPU: drawing the views, the forward
    pass, loss + L_VRNS, backward, AdamW, the batch statistics and the non-finite check queue
    work without reading a value back or copying a constant over (counted on meta tensors)."""
    model = models.ContrastiveModel("resnet18", width=4, stem="cifar_s2")
    source = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    batches = data.batch_order(64, 16, epoch=0, seed=0, fixed=False)  # (4, 16)
    loss_fn = train.make_loss("simclr", temperature=0.5, siglip_t=10.0, siglip_b=10.0,
                              within_view=False)

    def two_steps(model, source, batches, generator):
        device = source.device
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        first_bad = torch.full((), -1, device=device)
        sums = torch.zeros(len(train.STEP_STATS), device=device)
        views = train.epoch_views(source, batches, rows=(0, 16), generator=generator, seed=0,
                                  aug=data.augment_kwargs("shapes"), first_step=0, workers=0,
                                  device=device)
        for step, (x, y) in zip(range(2), views):
            optimizer.param_groups[0]["lr"] = train.lr_at(step, total_steps=8, warmup_steps=2,
                                                          peak_lr=1e-3)
            now = train.contrastive_step(model, optimizer, x, y, loss_fn=loss_fn,
                                         vrns_fn=losses.vrns_loss, n=64, lam=1.0)
            first_bad = torch.where((first_bad < 0) & ~now.isfinite().all(), step, first_bad)
            sums += now

    counts = count_syncs(two_steps, model, source, batches, torch.Generator().manual_seed(0),
                         fake_device="meta")
    assert not counts, counts


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


def test_choose_speed_times_only_real_candidates():
    """On one core (the tests' setting) the candidates are 1 thread in fp32 and bf16: no count
    of 0 threads, which torch refuses. A fixed --threads and --precision skip the timing."""
    model = models.ContrastiveModel("resnet18", width=4, stem="cifar_s2")
    cpu = torch.device("cpu")
    threads, precision = train.choose_speed(model, batch=4, size=16, threads=0,
                                            precision="auto", device=cpu)
    assert threads == 1 and precision in ("fp32", "bf16")
    assert train.choose_speed(model, batch=4, size=16, threads=3, precision="fp32",
                              device=cpu) == (3, "fp32")


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
