"""STL-10 through torchvision: tiny files in its stl10_binary layout, read by data.load_dataset.
Each split has its own size (64 unlabeled, 56 labelled train, 40 test), so a count tells which
split a number came from. write_stl10 also serves runs of train.py on these files."""
import traceback

import numpy as np
import pytest
import torch

import data

# one colour per class (0..9), far apart in RGB: the labelled splits are easy to tell apart
# (kept in 20..235, so that the noise is never clipped)
COLOURS = np.array([(230, 25, 75), (60, 180, 75), (235, 225, 25), (20, 130, 200), (235, 130, 48),
                    (145, 30, 180), (70, 235, 235), (235, 50, 230), (128, 128, 128), (20, 20, 20)])
FILES = ("unlabeled_X.bin", "train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")


def write_stl10(root, *, unlabeled=64, train_count=56, test=40, skip=()):
    """Tiny STL-10 binaries: uint8 (N, 3, 96, 96) stored column-major, labels 1..10; each image
    its class's colour plus noise (+-20). Returns {split: (images (N, 3, H, W), labels 0..9)}
    (the unlabeled images are coloured by a class too, which the files do not record)."""
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
    (folder / "class_names.txt").write_text("\n".join(f"class {k}" for k in range(10)) + "\n")
    return written


def test_written_files_read_back(tmp_path, no_md5):
    written = write_stl10(tmp_path)
    for split in ("train", "test", "unlabeled"):
        images, labels = written[split]
        assert not np.array_equal(images[:, :, 0], images[:, :, :, 0])  # rows are not columns
        x, y, classes = data.load_dataset("stl10", split, data_dir=tmp_path)
        assert x.dtype == torch.uint8 and x.shape == images.shape and x.is_contiguous()
        assert np.array_equal(x.numpy(), images)  # stored column-major, read the right way round
        expected = np.full(len(images), -1) if split == "unlabeled" else labels  # 1..10 -> 0..9
        assert y.dtype == torch.int64 and np.array_equal(y.numpy(), expected)
        assert classes == 10
    means = x.double().mean((2, 3)).numpy()  # (N, 3) each image's mean colour
    assert np.abs(means - COLOURS[written["unlabeled"][1]]).max() < 1


@pytest.mark.parametrize("missing", FILES)
def test_a_missing_file_names_the_folder_and_the_fix(tmp_path, no_md5, missing):
    # torchvision reads a split only when all five files are there
    write_stl10(tmp_path, skip=(missing,))
    with pytest.raises(FileNotFoundError) as info:
        data.load_dataset("stl10", "test", data_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "stl10_binary") in message
    assert "--download" in message and "Dataset not found" not in "".join(
        traceback.format_exception(info.value))  # torchvision's RuntimeError, replaced


def test_pretrains_on_unlabeled_and_evaluates_on_the_labelled_splits(tmp_path, no_md5):
    """--dataset stl10_unlabeled: n is the unlabeled count, the probes see the labelled train
    (56) and test (40) splits, Table 1 draws its pairs from the unlabeled images (no labels,
    so no class split), and the monitor's bank and queries are labelled images."""
    import eval as evaluation
    import train
    write_stl10(tmp_path)
    out = tmp_path / "run"
    train.main(["--dataset", "stl10_unlabeled", "--data-dir", str(tmp_path), "--image-size", "32",
                "--width", "4", "--batch-size", "16", "--epochs", "1", "--track-size", "16",
                "--monitor-size", "8", "--probe-epochs", "1", "--precision", "fp32",
                "--threads", "1", "--out-dir", str(out)])
    summary = __import__("json").loads((out / "summary.json").read_text())
    assert summary["n_train"] == 64 and summary["table1_stats"]["count"] == 64
    assert "neg_same_count" not in summary["table1_stats"]
    splits = evaluation.load_splits(summary["args"], data_dir=str(tmp_path))
    assert len(splits["train"][0]) == 56 and len(splits["test"][0]) == 40
    assert (splits["train"][1] >= 0).all() and (splits["monitor"][1] >= 0).all()
    assert (splits["pairs"][1] == -1).all()
