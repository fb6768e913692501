"""fastscore.ncsn.config: ncsn's anneal.yml schema, packaged configs, validation, round trips."""
import numpy as np
import pytest
import torch
import yaml

from fastscore.ncsn.config import (
    SCHEMA,
    Config,
    ConfigError,
    available_configs,
    default_config,
    get_sigmas,
    load_config,
)

# ermongroup/ncsn configs/anneal.yml, as distributed (comments included).
NCSN_ANNEAL_YML = """\
training:
  batch_size: 128
  n_epochs: 500000
  n_iters: 200001
  ngpu: 1
  snapshot_freq: 5000
  algo: 'dsm'
  anneal_power: 2.0

data:
  ## mnist
  dataset: "MNIST"
  image_size: 28
  channels: 1
  logit_transform: false
  random_flip: false
  ## celeba
#  dataset: "CELEBA"
#  image_size: 32
#  channels: 3
#  logit_transform: false
#  random_flip: true

model:
  sigma_begin: 1
  sigma_end: 0.01
  num_classes: 10
  batch_norm: false
  ## configurations for CelebA, CIFAR10
#  ngf: 128
  ### configurations for MNIST
  ngf: 64

optim:
  weight_decay: 0.000
  optimizer: "Adam"
  lr: 0.001
  beta1: 0.9
  amsgrad: false
"""


@pytest.fixture
def anneal_yml(tmp_path):
    path = tmp_path / "anneal.yml"
    path.write_text(NCSN_ANNEAL_YML)
    return path


def test_ncsn_anneal_yml_loads_as_is(anneal_yml):
    config = load_config(anneal_yml)
    raw = yaml.safe_load(NCSN_ANNEAL_YML)
    for section, values in raw.items():
        for key, value in values.items():
            assert config[section][key] == value, (section, key)
    assert isinstance(config.model.sigma_begin, float) and config.model.sigma_begin == 1.0
    assert config.model.ngf == 64 and config.data.image_size == 28
    # The ncsn sections of the packaged MNIST config are ncsn's file.
    mnist = load_config("mnist")
    for section in raw:
        assert mnist[section].to_dict() == config[section].to_dict()
    # Also with the noise_schedule key some ncsn forks carry.
    assert load_config(anneal_yml, {"training.noise_schedule": "geometric"}).training.noise_schedule == "geometric"


def test_packaged_configs():
    names = available_configs()
    assert {"mnist", "cifar10", "celeba", "mnist-small", "demo"} <= set(names)
    for name in names:
        config = load_config(name)
        assert config.data.image_size % 2 == 0
    cifar, celeba = load_config("cifar10"), load_config("celeba")
    assert (cifar.data.dataset, cifar.data.channels, cifar.data.image_size, cifar.model.ngf) == ("CIFAR10", 3, 32, 128)
    assert (celeba.data.dataset, celeba.data.channels, celeba.data.image_size) == ("CELEBA", 3, 32)
    assert cifar.data.random_flip and celeba.data.random_flip
    small = load_config("demo")
    assert small == load_config("mnist-small")
    assert small.data.image_size == 28 and small.model.ngf <= 32 and small.model.num_classes < 10
    assert small.data.subset == 5000


def test_defaults_fill_missing_keys():
    config = load_config({"model": {"ngf": 8}})
    assert config.model.ngf == 8
    assert config.training.n_iters == SCHEMA["training"]["n_iters"].default
    assert config.sampling.n_steps_each == 100 and config.fastscore.backend == "auto"
    assert config.data.subset is None
    assert default_config() == load_config(None) == load_config({})


def test_attribute_access_and_dict_round_trip(tmp_path):
    config = load_config("cifar10")
    assert config.model.ngf == config["model"]["ngf"] == config.model.get("ngf")
    assert "model" in config and "ngf" in config.model and "nope" not in config.model
    d = config.to_dict()
    assert isinstance(d["model"], dict) and d["model"]["ngf"] == 128
    assert Config.from_dict(d) == config
    # Through YAML and back (what a checkpoint or a run folder stores).
    path = tmp_path / "run.yml"
    path.write_text(yaml.safe_dump(d))
    assert load_config(path) == config
    # to_dict is a copy.
    d["model"]["ngf"] = 1
    assert config.model.ngf == 128
    # ncsn's scripts set attributes on the parsed config.
    config.device = "cpu"
    assert config.to_dict()["device"] == "cpu"


def test_overrides():
    config = load_config("mnist", {"model.ngf": 16, "training": {"batch_size": 8}})
    assert config.model.ngf == 16 and config.training.batch_size == 8
    with pytest.raises(ConfigError, match=r"model\.ngff"):
        load_config("mnist", {"model.ngff": 1})
    with pytest.raises(ConfigError, match="unknown config section 'modle'"):
        load_config("mnist", {"modle.ngf": 1})
    with pytest.raises(ConfigError, match="section.key"):
        load_config("mnist", {"ngf": 1})


@pytest.mark.parametrize("raw,match", [
    ({"model": {"ngff": 64}}, r"unknown config key 'model\.ngff'"),
    ({"training": {"batchsize": 64}}, r"unknown config key 'training\.batchsize'"),
    ({"sampler": {}}, "unknown config section 'sampler'"),
    ({"model": {"ngf": "64"}}, r"model\.ngf must be an integer"),
    ({"model": {"ngf": 0}}, r"model\.ngf must be >= 1"),
    ({"model": {"ngf": 2.5}}, r"model\.ngf must be an integer"),
    ({"data": {"logit_transform": "no"}}, r"data\.logit_transform must be true or false"),
    ({"data": {"dataset": "ImageNet"}}, r"data\.dataset must be one of"),
    ({"optim": {"optimizer": "adam"}}, r"optim\.optimizer must be one of"),
    ({"optim": {"lr": 0}}, r"optim\.lr must be > 0"),
    ({"optim": {"lr": "fast"}}, r"optim\.lr must be a number"),
    ({"optim": {"beta1": 1.0}}, r"optim\.beta1 must be < 1"),
    ({"training": {"algo": "ssm"}}, r"training\.algo must be one of 'dsm'"),
    ({"model": {"batch_norm": True}}, r"model\.batch_norm must be one of False"),
    ({"model": {"sigma_begin": 0.01, "sigma_end": 1}}, r"sigma_begin .* must be >= model\.sigma_end"),
    ({"model": {"sigma_end": float("inf")}}, r"model\.sigma_end must be finite"),
    ({"model": {"ngf": None}}, r"model\.ngf must be set"),
    ({"model": {"arch": "CondRefineNetDeeperDilated"}, "data": {"image_size": 30}}, "multiple of 4"),
    ({"model": 3}, "section 'model' must be a mapping"),
])
def test_validation_errors_name_the_key(raw, match):
    with pytest.raises(ConfigError, match=match):
        load_config(raw)


def test_conversions():
    config = load_config({"optim": {"lr": "1e-3", "weight_decay": 0}, "training": {"n_iters": 2e5}})
    assert config.optim.lr == 0.001 and isinstance(config.optim.weight_decay, float)
    assert config.training.n_iters == 200000 and isinstance(config.training.n_iters, int)
    assert load_config({"data": {"subset": None}}).data.subset is None


def test_bad_sources(tmp_path):
    with pytest.raises(ConfigError, match="no config named 'mnits'"):
        load_config("mnits")
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)
    with pytest.raises(TypeError):
        load_config(42)


def test_sigmas():
    config = load_config("mnist")
    expected = np.exp(np.linspace(np.log(1.0), np.log(0.01), 10))   # ncsn's formula
    sigmas = get_sigmas(config)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (10,)
    assert torch.equal(sigmas, torch.tensor(expected, dtype=torch.float32))
    linear = get_sigmas(load_config("mnist", {"training.noise_schedule": "linear"}))
    torch.testing.assert_close(linear, torch.linspace(1.0, 0.01, 10))
    # Works on ncsn's own namespace too (no training.noise_schedule key: geometric).
    import types
    ns = types.SimpleNamespace(model=types.SimpleNamespace(sigma_begin=50, sigma_end=0.01, num_classes=232))
    assert get_sigmas(ns)[0].item() == 50.0 and get_sigmas(ns).shape == (232,)
