"""--dataset stl10_unlabeled end to end on tiny files in torchvision's stl10_binary layout: it
pre-trains on the unlabeled images and is evaluated (linear probe, kNN, the per-epoch monitor)
on the labelled train and test splits. Each split has its own size (64 unlabeled, 56 labelled
train, 40 test), so a count tells which split a number came from. About five seconds."""
import json

import numpy as np
import pytest

import data
import eval as evaluation
import train

# one colour per class (0..9), far apart in RGB: the labelled splits are easy to tell apart
# (kept in 20..235, so that the noise is never clipped)
COLOURS = np.array([(230, 25, 75), (60, 180, 75), (235, 225, 25), (20, 130, 200), (235, 130, 48),
                    (145, 30, 180), (70, 235, 235), (235, 50, 230), (128, 128, 128), (20, 20, 20)])


def write_stl10(root, *, unlabeled=64, train_count=56, test=40, skip=()):
    """Tiny STL-10 binaries: uint8 (N, 3, 96, 96) stored column-major, labels 1..10; each image
    its class's colour plus noise (+-20). Returns {split: (images (N, 3, H, W), labels 0..9)}."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng, written = np.random.default_rng(0), {}
    for split, count in (("unlabeled", unlabeled), ("train", train_count), ("test", test)):
        y = np.arange(count) % 10  # (N,) every class
        noise = rng.integers(-20, 21, (count, 3, 96, 96))  # (N, 3, H, W)
        x = (COLOURS[y][:, :, None, None] + noise).astype(np.uint8)
        written[split] = x, y
        if f"{split}_X.bin" not in skip:  # tofile writes C order: transpose = column-major
            x.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")
        if split != "unlabeled" and f"{split}_y.bin" not in skip:
            (y + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    return written


def tiny_run(root, out):
    return ["--dataset", "stl10_unlabeled", "--data-dir", str(root), "--image-size", "32",
            "--width", "4", "--batch-size", "16", "--epochs", "1", "--train-size", "48",
            "--track-size", "16", "--monitor-size", "20", "--probe-epochs", "2",
            "--precision", "fp32", "--threads", "1", "--out-dir", str(out)]


def test_written_files_read_back(tmp_path):
    written = write_stl10(tmp_path)
    x, y, classes = data.load_dataset("stl10", data_dir=tmp_path, train=False)
    assert classes == 10 and np.array_equal(x.numpy(), written["test"][0])
    assert np.array_equal(y.numpy(), written["test"][1])
    means = x.double().mean((2, 3)).numpy()  # (N, 3) each image's mean colour
    assert np.abs(means - COLOURS[y.numpy()]).max() < 1
    x, y, _ = data.load_dataset("stl10_unlabeled", data_dir=tmp_path, train=True)
    assert np.array_equal(x.numpy(), written["unlabeled"][0]) and (y == -1).all()


def test_pretrains_on_unlabeled_and_evaluates_on_the_labelled_splits(tmp_path, monkeypatch):
    written = write_stl10(tmp_path)
    seen = []  # (bank size, query size, smallest label) of every kNN and probe evaluation
    measured = []  # the images of every similarity-statistics evaluation

    def spy(fn):
        def wrapped(train_f, train_y, test_f, test_y, **kwargs):
            seen.append((fn.__name__, len(train_f), len(test_f), int(min(train_y.min(),
                                                                         test_y.min()))))
            return fn(train_f, train_y, test_f, test_y, **kwargs)
        return wrapped

    monkeypatch.setattr(evaluation, "knn_accuracy", spy(evaluation.knn_accuracy))
    monkeypatch.setattr(evaluation, "linear_probe", spy(evaluation.linear_probe))
    stats = evaluation.table1_stats

    def recorded_stats(model, images, **kwargs):
        measured.append(images.cpu().numpy())
        return stats(model, images, **kwargs)

    monkeypatch.setattr(evaluation, "table1_stats", recorded_stats)
    out = tmp_path / "run"
    train.main(tiny_run(tmp_path, out))
    summary = json.loads((out / "summary.json").read_text())
    # pre-training and Table 1: the first 48 unlabeled images (--train-size 48 of 64); the
    # tracked statistics every epoch, then Table 1 of the trained and the random-init model
    assert summary["n_train"] == 48 and summary["table1_stats"]["count"] == 48
    assert summary["random_init"]["table1_stats"]["count"] == 48
    tracked, *table1 = measured
    unlabeled = written["unlabeled"][0][:48]  # (48, 3, 96, 96)
    assert len(table1) == 2 and all(np.array_equal(x, unlabeled) for x in table1)
    assert len(tracked) == 16 and all((x == unlabeled).all((1, 2, 3)).any() for x in tracked)
    # the monitor once, then probe and kNN of the trained and the random-init encoder: all on
    # labelled images, the final ones on the whole labelled train split (56, not the 48 that
    # --train-size keeps of the unlabeled images) against the 40 test images
    assert seen == [("knn_accuracy", 20, 20, 0)] + [("linear_probe", 56, 40, 0),
                                                    ("knn_accuracy", 56, 40, 0)] * 2
    for acc in (summary["linear_acc"], summary["knn_acc"], summary["random_init"]["knn_acc"]):
        assert acc * 40 / 100 == pytest.approx(round(acc * 40 / 100))  # k of 40 test images
    assert summary["knn_acc"] > 30  # ten colours, chance 10 %: the labels match the images
    (record,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert record["monitor"]["knn_acc"] % 5 == 0  # k of 20 queries

    seen.clear(), measured.clear()  # eval.py evaluates the run the same way
    evaluation.main(["--ckpt", str(out), "--probe-epochs", "2", "--device", "cpu"])
    result = json.loads((out / "eval.json").read_text())
    assert seen == [("linear_probe", 56, 40, 0), ("knn_accuracy", 56, 40, 0)]
    assert len(measured) == 1 and np.array_equal(measured[0], unlabeled)
    assert result["knn_acc"] == summary["knn_acc"]
    assert result["table1_stats"] == pytest.approx(summary["table1_stats"])


@pytest.mark.parametrize("missing", ["test_y.bin", "train_X.bin"])
def test_missing_labelled_split_fails_before_training(tmp_path, capsys, monkeypatch, missing):
    write_stl10(tmp_path, skip=(missing,))

    def read(*args, **kwargs):
        raise AssertionError("read a split (2.8 GB for the real one) before checking the files")

    monkeypatch.setattr(data, "load_dataset", read)
    with pytest.raises(SystemExit) as exit_info:
        train.main(tiny_run(tmp_path, tmp_path / "run"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "--dataset stl10_unlabeled" in err and missing in err and "--download" in err
    assert not (tmp_path / "run").exists()  # nothing written: it stopped before training
