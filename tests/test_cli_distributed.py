"""The command line under torchrun's variables (2 gloo processes, spawned here and bounded in time): train
gives the one-process weights, sample the one-process images in one file; eval computes FID, IS and KID."""
import json
import os

import numpy as np
import pytest

from fastscore.ncsn import training
from fastscore.ncsn.cli import main

from helpers import requires_cuda, run_ranks

TINY = ["--set", "model.ngf=4", "--set", "model.num_classes=3", "--set", "sampling.n_steps_each=2",
        "--set", "training.snapshot_freq=2", "--set", "fastscore.log_freq=1", "--batch-size", "8",
        "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-ddp")
    one, two = str(root / "one"), str(root / "two")
    args = ["train", "--config", "demo", "--n-iters", "3", "--sample-count", "4", *TINY]
    assert main([*args, "--workdir", one]) == 0
    run_ranks(2, ["-m", "fastscore", *args, "--workdir", two], timeout=240)
    return one, two


def test_torchrun_train_gives_the_one_process_weights(runs):
    one, two = (training.load_checkpoint(r) for r in runs)
    assert two["data"]["world_size"] == 2 and two["step"] == 3 and two["noise"] == one["noise"]
    diff = max((one["model"][k] - two["model"][k]).abs().max().item() for k in one["model"])
    print(f"max |weights(2 processes) - weights(1 process)| through the CLI = {diff:.3g}")
    assert diff < 1e-5
    assert sorted(os.listdir(os.path.join(runs[1], "samples"))) == ["step_0000003.png"]


def test_torchrun_sample_writes_the_one_process_images_once(runs, tmp_path):
    one_npz, two_npz, folder = str(tmp_path / "one.npz"), str(tmp_path / "two.npz"), str(tmp_path / "imgs")
    args = ["--num-samples", "5", "--seed", "3", "--quiet", "--device", "cpu"]
    assert main(["sample", runs[0], *args, "--npz", one_npz, "--batch", "2"]) == 0
    run_ranks(2, ["-m", "fastscore", "sample", runs[0], *args, "--npz", two_npz, "--out-dir", folder],
              timeout=240)
    a, b = np.load(one_npz)["samples"], np.load(two_npz)["samples"]
    assert a.shape == b.shape == (5, 28, 28, 1) and a.dtype == np.uint8
    # float rounding of a batch-size-dependent kernel may move a pixel across a rounding boundary, no more
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1 and (a == b).mean() > 0.99
    assert sorted(os.listdir(folder)) == [f"{i:06d}.png" for i in range(5)]


def test_eval_computes_fid_is_kid_and_caches_the_reference(runs, tmp_path, capsys):
    pytest.importorskip("torch_fidelity", reason="the eval extra (torch-fidelity) is not installed")
    from helpers import random_inception

    weights = random_inception(str(tmp_path / "inception.pth"))
    out, cache = str(tmp_path / "m.json"), str(tmp_path / "cache")
    args = ["eval", runs[0], "--n", "6", "--batch", "4", "--inception-weights", weights, "--reference-limit", "8",
            "--reference-cache", cache, "--out", out, "--quiet", "--device", "cpu"]
    assert main(args) == 0
    figures = json.load(open(out))
    assert figures["samples"] == 6 and figures["step"] == 3
    assert np.isfinite(figures["fid"]) and figures["fid"] > 0 and figures["is_mean"] >= 1.0
    assert np.isfinite(figures["kid_mean"])
    assert len(os.listdir(cache)) == 1
    npz = os.path.join(runs[0], "eval", "samples-seed0-n6.npz")
    assert np.load(npz)["samples"].shape == (6, 28, 28, 1)
    # the same samples from the .npz, only IS: the same figure
    assert main(["eval", runs[0], "--samples", npz, "--is", "--inception-weights", weights, "--out", out,
                 "--quiet", "--device", "cpu"]) == 0
    assert json.load(open(out))["is_mean"] == pytest.approx(figures["is_mean"], rel=1e-9)


def test_eval_without_weights_is_one_line(runs, tmp_path, capsys):
    pytest.importorskip("torch_fidelity", reason="the eval extra (torch-fidelity) is not installed")
    missing = str(tmp_path / "none.pth")
    assert main(["eval", runs[0], "--n", "2", "--inception-weights", missing, "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and missing in err and "--inception-weights" in err


@requires_cuda
def test_torchrun_on_one_gpu_trains_over_nccl_as_one_process(tmp_path):
    """The NCCL path (distributed.init picks it for a CUDA device): one rank, DDP on, against no torchrun."""
    gpu = [a if a != "cpu" else "cuda" for a in TINY]
    args = ["train", "--config", "demo", "--n-iters", "3", "--sample-count", "0", "--no-cuda-graph", *gpu]
    one, nccl = str(tmp_path / "one"), str(tmp_path / "nccl")
    assert main([*args, "--workdir", one]) == 0
    run_ranks(1, ["-m", "fastscore", *args, "--workdir", nccl], timeout=100)  # the GPU run kills a test at 120 s
    a, b = training.load_checkpoint(one, map_location="cpu"), training.load_checkpoint(nccl, map_location="cpu")
    assert b["data"]["world_size"] == 1 and b["step"] == a["step"] == 3 and b["noise"] == a["noise"]
    diff = max((a["model"][k].double() - b["model"][k].double()).abs().max().item() for k in a["model"])
    print(f"max |weights(torchrun, NCCL, 1 GPU) - weights(1 process)| = {diff:.3g}")
    assert diff < 1e-4
