"""`fastscore sample / inpaint` with --sampler, and with checkpoints as ermongroup/ncsn and ncsnv2 publish them."""
import json

import pytest
import torch
import yaml
from PIL import Image

from fastscore.models import build_model, load_ncsn_state_dict
from fastscore.ncsn import training
from fastscore.ncsn.cli import main
from fastscore.ncsn.config import get_sigmas, load_config
from fastscore.ncsn.images import save_png

TINY = {"model.ngf": 4, "model.num_classes": 3, "sampling.n_steps_each": 2, "fastscore.device": "cpu"}


def published(tmp_path, arch):
    """A config YAML and an ncsn (CondRefineNetDilated) or ncsnv2 (NCSNv2, with EMA) checkpoint file written
    as those projects save them, from a network of that shape with random weights."""
    config = load_config("demo", {**TINY, "model.arch": arch})
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():  # weights unlike a fresh init, so loading the wrong ones would show
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = {"module." + k: v for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters()).state_dict()
    if arch == "NCSNv2":
        ema = {"module." + k: v + 0.01 for k, v in model.named_parameters()}
        states = [state, optimizer, 12, 3456, ema]
    else:
        states = [state, optimizer]
    path = tmp_path / f"{arch}.pth"
    torch.save(states, path)
    config_path = tmp_path / f"{arch}.yml"
    config_path.write_text(yaml.safe_dump(config.to_dict()))
    return path, config_path, states


@pytest.mark.parametrize("arch", ["CondRefineNetDilated", "NCSNv2"])
def test_published_checkpoint_loads_with_its_config(arch, tmp_path):
    path, config_path, states = published(tmp_path, arch)
    model, config, ckpt = training.load_model(str(path), device="cpu", config=str(config_path))
    expected = build_model(config)
    load_ncsn_state_dict(expected, states)
    if arch == "NCSNv2":  # the EMA weights, by default
        assert ckpt["published"] == "ncsnv2" and ckpt["step"] == 3456
        for p in expected.parameters():
            p.data.add_(0.01)
    for k, v in expected.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    torch.testing.assert_close(ckpt["sigmas"], get_sigmas(config))


def test_sample_takes_an_ncsn_checkpoint_directly(tmp_path, capsys):
    path, config_path, states = published(tmp_path, "CondRefineNetDilated")
    out = tmp_path / "s.png"
    assert main(["sample", str(path), "--config", str(config_path), "--n", "4", "--out", str(out), "--quiet",
                 "--sampler", "pc", "--steps", "1", "--seed", "3"]) == 0
    said = capsys.readouterr().out
    assert "ermongroup/ncsn" in said and "predictor-corrector" in said and "6 network evaluations" in said
    # The same samples through the Python API from the same file (the network as sampling builds it).
    config = load_config(str(config_path))
    model = training.build_model_for(config, torch.device("cpu"))
    load_ncsn_state_dict(model, states)
    sampler = training.make_sampler(model.eval(), config, get_sigmas(config), "cpu", n_steps_each=1, sampler="pc")
    save_png(sampler.sample(4, seed=3, progress=False), tmp_path / "api.png")
    assert Image.open(out).tobytes() == Image.open(tmp_path / "api.png").tobytes()


def test_inpaint_takes_an_ncsnv2_checkpoint(tmp_path, capsys):
    path, config_path, _ = published(tmp_path, "NCSNv2")
    out = tmp_path / "i.png"
    assert main(["inpaint", str(path), "--config", str(config_path), "--n", "2", "--per-image", "1",
                 "--out", str(out), "--quiet", "--sampler", "heun"]) == 0
    assert "ermongroup/ncsnv2 step 3456 EMA weights" in capsys.readouterr().out
    assert Image.open(out).size[0] > 0


def test_published_checkpoint_without_config_is_a_one_line_error(tmp_path, capsys):
    path, _, _ = published(tmp_path, "CondRefineNetDilated")
    assert main(["sample", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--config" in err and "ermongroup/ncsn" in err


def test_published_checkpoint_with_the_wrong_config_is_a_one_line_error(tmp_path, capsys):
    path, _, _ = published(tmp_path, "CondRefineNetDilated")
    wrong = tmp_path / "wrong.yml"
    wrong.write_text(yaml.safe_dump(load_config("demo", {**TINY, "model.ngf": 8}).to_dict()))
    assert main(["sample", str(path), "--config", str(wrong), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not fit" in err


@pytest.mark.parametrize("args, message", [
    (["--sampler", "pc", "--eta", "0.5"], "--eta is for the consistent sampler"),
    (["--sampler", "euler", "--steps", "3"], "--steps is for the langevin"),
    (["--sampler", "consistent", "--eta", "0.1"], "eta 0.1 is too small"),
    (["--sampler", "reverse", "--levels", "9"], "levels must be between 1 and the 3"),
])
def test_sampler_arguments_that_do_not_fit_are_one_line_errors(args, message, tmp_path, capsys):
    path, config_path, _ = published(tmp_path, "CondRefineNetDilated")
    assert main(["sample", str(path), "--config", str(config_path), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_compare_samplers_reports_each_spec(tmp_path, capsys, monkeypatch):
    from fastscore.ncsn import compare, metrics

    real_train = metrics.train_classifier
    monkeypatch.setattr(metrics, "train_classifier", lambda seed=0: real_train(epochs=1, width=8, seed=seed))
    path, config_path, _ = published(tmp_path, "CondRefineNetDilated")
    out = tmp_path / "cmp"
    assert main(["compare-samplers", str(path), "--config", str(config_path), "--samplers", "langevin:2",
                 "reverse", "euler,levels=2", "--seeds", "2", "--n", "3", "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "samplers.json").read_text())
    rows = {r["spec"]: r for r in report["rows"]}
    assert [r["spec"] for r in report["rows"]] == ["langevin:2", "reverse", "euler,levels=2"]
    assert rows["langevin:2"]["evaluations"] == 3 * 2 + 1 and rows["reverse"]["evaluations"] == 3
    assert rows["euler,levels=2"]["evaluations"] == 2
    assert all(len(r["runs"]) == 2 and 0.0 < r["mean_confidence"] <= 1.0 for r in report["rows"])
    seeds_differ = rows["reverse"]["runs"][0]["mean_confidence"] != rows["reverse"]["runs"][1]["mean_confidence"]
    assert seeds_differ
    assert report["checkpoint"]["published"] == "ncsn" and len(report["checkpoint"]["sha256"]) == 12
    assert report["command"].startswith("fastscore compare-samplers")
    assert "| `reverse` (reverse diffusion) | 3 |" in capsys.readouterr().out
    assert (out / "samplers.md").read_text() == compare.markdown(report)


def test_goal_picks_cheap_samplers_close_to_the_baseline():
    from fastscore.ncsn.compare import goal

    rows = [{"spec": "base", "evaluations": 200, "mean_confidence": 0.80},
            {"spec": "cheap-good", "evaluations": 40, "mean_confidence": 0.785},
            {"spec": "cheap-bad", "evaluations": 40, "mean_confidence": 0.77},
            {"spec": "dear-good", "evaluations": 41, "mean_confidence": 0.9}]
    assert goal(rows) == ["cheap-good"]


@pytest.mark.parametrize("text", ["nope", "pc:x", "pc:2,foo=1", "pc:2,snr"])
def test_bad_specs_are_one_line_errors(text, tmp_path, capsys):
    assert main(["compare-samplers", str(tmp_path), "--samplers", text, "--quiet"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
