"""train, sample, inpaint and demo end to end through the command line, at tiny sizes."""
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fastscore.ncsn import training
from fastscore.ncsn.cli import main

TINY = ["--set", "model.ngf=4", "--set", "model.num_classes=3", "--set", "sampling.n_steps_each=2",
        "--set", "training.snapshot_freq=2", "--set", "fastscore.log_freq=1", "--batch-size", "8",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    assert main(["train", "--config", "demo", "--workdir", workdir, "--n-iters", "3", "--sample-count", "4",
                 "--sample-every", "2", "--quiet", *TINY]) == 0
    return workdir


def test_train_writes_checkpoint_log_and_grids(run_dir):
    ckpt = training.load_checkpoint(run_dir)
    assert ckpt["step"] == 3
    assert ckpt["config"]["model"]["ngf"] == 4 and ckpt["config"]["training"]["batch_size"] == 8
    assert ckpt["meta"]["data"]["name"] == "mnist5k" and ckpt["meta"]["images"] == 4500
    assert ckpt["noise"]["offset"] == 3 * 8 * 28 * 28
    rows = open(os.path.join(run_dir, "log.csv")).read().split()
    assert rows[0].startswith("step,loss") and [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    assert sorted(os.listdir(os.path.join(run_dir, "samples"))) == ["step_0000002.png", "step_0000003.png"]
    assert not [f for f in os.listdir(run_dir) if ".tmp" in f]


def test_train_refuses_to_overwrite_and_resumes(run_dir, tmp_path, capsys):
    assert main(["train", "--config", "demo", "--workdir", run_dir, "--n-iters", "4", "--quiet", *TINY]) == 2
    assert "--resume" in capsys.readouterr().err
    # Resume a copy (the module fixture's run stays as it is for the other tests).
    copy = tmp_path / "copy"
    copy.mkdir()
    ckpt = training.load_checkpoint(run_dir)
    torch.save(ckpt, copy / training.CHECKPOINT_NAME)
    assert main(["train", "--workdir", str(copy), "--resume", "--n-iters", "5", "--sample-count", "0",
                 "--quiet"]) == 0
    resumed = training.load_checkpoint(str(copy))
    assert resumed["step"] == 5 and resumed["config"]["model"]["ngf"] == 4
    assert resumed["config"]["training"]["n_iters"] == 5


def test_sample_writes_a_grid(run_dir, tmp_path, capsys):
    out = str(tmp_path / "s.png")
    assert main(["sample", run_dir, "--n", "6", "--nrow", "3", "--out", out, "--quiet", "--seed", "4"]) == 0
    img = Image.open(out)
    assert img.size == (2 + 3 * 30, 2 + 2 * 30) and img.mode == "L"  # 28 px images, 2 px padding
    assert "EMA" in capsys.readouterr().out  # the demo config keeps an EMA; sample uses it by default
    again = str(tmp_path / "t.png")
    main(["sample", run_dir, "--n", "6", "--nrow", "3", "--out", again, "--quiet", "--seed", "4"])
    assert Image.open(again).tobytes() == img.tobytes()  # a seed fixes the samples
    raw = str(tmp_path / "raw.png")
    main(["sample", run_dir, "--n", "6", "--nrow", "3", "--out", raw, "--quiet", "--seed", "4", "--no-ema"])
    assert Image.open(raw).tobytes() != img.tobytes()  # the raw weights differ from the EMA ones


def test_inpaint_keeps_the_known_half(run_dir, tmp_path):
    out = str(tmp_path / "i.png")
    assert main(["inpaint", run_dir, "--n", "3", "--per-image", "2", "--out", out, "--quiet"]) == 0
    grid = torch.from_numpy(np.array(Image.open(out))).float()
    assert grid.shape == (2 + 4 * 30, 2 + 3 * 30)
    tile = lambda r, c: grid[2 + 30 * r: 30 * r + 30, 2 + 30 * c: 30 * c + 30]  # noqa: E731
    for c in range(3):
        original = tile(3, c)
        assert original.max() > 200  # a real digit
        for r in (1, 2):  # completions: the top half is the original's, exactly
            assert torch.equal(tile(r, c)[:14], original[:14])
        assert torch.equal(tile(0, c)[14:], torch.full((14, 28), 128.0))  # the input shows the hidden half grey


def test_missing_dataset_is_a_clear_error(tmp_path, capsys):
    pytest.importorskip("torchvision")
    code = main(["train", "--config", "cifar10", "--workdir", str(tmp_path / "w"), "--data-root",
                 str(tmp_path), "--quiet"])
    assert code == 2
    assert "never downloads" in capsys.readouterr().err


def test_missing_torchvision_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision now raises ImportError
    code = main(["train", "--config", "cifar10", "--workdir", str(tmp_path / "w"), "--data-root",
                 str(tmp_path), "--quiet"])
    assert code == 2
    assert "pip install torchvision" in capsys.readouterr().err


def test_bad_override_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="section.key=value"):
        main(["train", "--workdir", str(tmp_path), "--set", "ngf32"])


def test_demo_tiny_writes_report(tmp_path):
    out = str(tmp_path / "demo")
    assert main(["demo", "--tiny", "--out", out, "--quiet"]) == 0
    for name in ("samples.png", "inpaint.png", "report.md", "report.json", "run/checkpoint.pt"):
        assert os.path.exists(os.path.join(out, name)), name
    report = json.load(open(os.path.join(out, "report.json")))
    assert report["training"]["steps"] == 4
    figures = report["figures"]
    assert figures["samples"]["count"] == 16 and len(figures["samples"]["histogram"]) == 10
    assert 0 < figures["real_held_out"]["mean_confidence"] <= 1
    md = open(os.path.join(out, "report.md")).read()
    assert "| generated samples | 16 |" in md and "real held-out digits" in md
