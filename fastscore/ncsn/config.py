"""Run configurations: ermongroup/ncsn's anneal.yml schema plus optional fastscore sections.

    config = load_config("mnist")                       # a packaged config (fastscore/ncsn/configs/mnist.yml)
    config = load_config("path/to/anneal.yml", {"model.ngf": 32})
    config.model.ngf, config.training.batch_size        # attribute access, like ncsn's parsed namespace
    config.to_dict()                                    # plain nested dict (for checkpoints); from_dict back

Sections and keys (anything else is an error that names the key):

    training  batch_size, n_epochs, n_iters, ngpu, snapshot_freq, algo, anneal_power, noise_schedule
              (+ level_power)
    data      dataset, image_size, channels, logit_transform, random_flip     (+ rescaled, subset, root)
    model     sigma_begin, sigma_end, num_classes, batch_norm, ngf            (+ arch)
    optim     weight_decay, optimizer, lr, beta1, amsgrad                     (+ beta2, eps)
    sampling  fastscore's annealed Langevin settings (all optional)
    fastscore fastscore's runtime settings: backend, device, seed, bf16, ema, compile, ... (all optional)

The keys in parentheses are fastscore extensions; every key has a default, so ncsn's anneal.yml loads
as is and a file only needs the keys it changes. Values are checked and converted on load (an int
where a float is expected becomes a float; "1e-3", which YAML reads as a string, becomes 0.001).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from . import architectures

__all__ = ["Config", "ConfigError", "load_config", "available_configs", "default_config", "get_sigmas",
           "SCHEMA", "ARCHS", "DATASETS"]

ARCHS = architectures.NAMES
DATASETS = ("MNIST", "CIFAR10", "CELEBA")
ALIASES = {"demo": "mnist-small"}


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key."""


@dataclass(frozen=True)
class Field:
    type: type                      # int, float, bool or str
    default: Any
    optional: bool = False          # None allowed
    choices: tuple | None = None
    min: float | None = None        # inclusive bounds
    max: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    help: str = ""


F = Field
SCHEMA: dict[str, dict[str, Field]] = {
    "training": {
        "batch_size": F(int, 128, min=1),
        "n_epochs": F(int, 500000, min=1),
        "n_iters": F(int, 200001, min=1, help="optimizer steps"),
        "ngpu": F(int, 1, min=0),
        "snapshot_freq": F(int, 5000, min=1, help="steps between checkpoints"),
        "algo": F(str, "dsm", choices=("dsm",), help="fastscore trains by denoising score matching only"),
        "anneal_power": F(float, 2.0, help="loss weight sigma^anneal_power"),
        "level_power": F(float, 0.0, min=-8, max=8,
                         help="noise levels drawn with probability proportional to sigma^level_power (0: uniform, "
                              "as ncsn; > 0 favours the large levels)"),
        "noise_schedule": F(str, "geometric", choices=("geometric", "linear")),
    },
    "data": {
        "dataset": F(str, "MNIST", choices=DATASETS),
        "image_size": F(int, 28, min=4),
        "channels": F(int, 1, min=1),
        "logit_transform": F(bool, False),
        "random_flip": F(bool, False),
        "rescaled": F(bool, False, help="NCSNv2: inputs already in [-1, 1], skip 2x - 1"),
        "subset": F(int, None, optional=True, min=1, help="train on the first N images only"),
        "root": F(str, None, optional=True, help="dataset folder"),
    },
    "model": {
        "sigma_begin": F(float, 1.0, min=0, min_exclusive=True, help="largest noise level"),
        "sigma_end": F(float, 0.01, min=0, min_exclusive=True, help="smallest noise level"),
        "num_classes": F(int, 10, min=1, help="number of noise levels"),
        "batch_norm": F(bool, False, choices=(False,), help="ncsn's key; its networks never use batch norm"),
        "ngf": F(int, 64, min=1, help="base channel width"),
        "arch": F(str, "CondRefineNetDilated", choices=ARCHS),
    },
    "optim": {
        "weight_decay": F(float, 0.0, min=0),
        "optimizer": F(str, "Adam", choices=("Adam", "RMSProp", "SGD")),
        "lr": F(float, 0.001, min=0, min_exclusive=True),
        "beta1": F(float, 0.9, min=0, max=1, max_exclusive=True),
        "amsgrad": F(bool, False),
        "beta2": F(float, 0.999, min=0, max=1, max_exclusive=True),
        "eps": F(float, 1e-8, min=0, min_exclusive=True),
    },
    "sampling": {
        "n_steps_each": F(int, 100, min=1, help="Langevin steps per noise level"),
        "step_lr": F(float, 2e-5, min=0, min_exclusive=True, help="step size at the smallest noise level"),
        "batch_size": F(int, 100, min=1, help="images sampled at once"),
        "final_denoise": F(bool, False, help="NCSNv2: add sigma_L^2 * score at the end"),
        "seed": F(int, None, optional=True, min=0),
    },
    "fastscore": {
        "backend": F(str, "auto", choices=("auto", "torch", "triton", "ext")),
        "device": F(str, "auto", help="auto (cuda when available), cpu, cuda, cuda:1, ..."),
        "seed": F(int, 0, min=0),
        "bf16": F(bool, False, help="autocast the network to bfloat16"),
        "ema": F(bool, False, help="keep an exponential moving average of the weights"),
        "ema_rate": F(float, 0.999, min=0, max=1, max_exclusive=True),
        "compile": F(bool, False, help="torch.compile the network"),
        "channels_last": F(bool, False),
        "cuda_graphs": F(bool, False),
        "fuse_norm_act": F(bool, False, help="fold the ELU after each norm into the norm kernel"),
        "log_freq": F(int, 100, min=1),
        "num_workers": F(int, 0, min=0),
    },
}
del F


class Config:
    """A nested namespace: attribute and item access, `in`, iteration over keys, to_dict().

    Attributes can be set (ncsn's scripts set `config.device`); to_dict() returns them too.
    """

    def __init__(self, values: Mapping[str, Any] | None = None):
        for key, value in (values or {}).items():
            setattr(self, key, Config(value) if isinstance(value, Mapping) else value)

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in vars(self)

    def __iter__(self) -> Iterator[str]:
        return iter(vars(self))

    def keys(self):
        return vars(self).keys()

    def items(self):
        return vars(self).items()

    def get(self, key: str, default: Any = None) -> Any:
        return vars(self).get(key, default)

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Config) else copy.deepcopy(v) for k, v in vars(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Config:
        """Validate a nested dict (e.g. a checkpoint's) against the schema; defaults fill the gaps."""
        return _build(values, source="dict")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"Config({inner})"


# ----------------------------------------------------------------------------------------------------
# Loading


def available_configs() -> list[str]:
    """Names of the packaged configs (fastscore/ncsn/configs/*.yml), plus aliases."""
    names = [p.name[:-4] for p in resources.files(__package__).joinpath("configs").iterdir()
             if p.name.endswith(".yml")]
    return sorted(names + list(ALIASES))


def default_config() -> Config:
    """Every key at its default (ncsn's MNIST settings)."""
    return _build({}, source="defaults")


def load_config(source: Any = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load and validate a config.

    source: a packaged name ("mnist", "cifar10", "celeba", "mnist-small" alias "demo"), a path to a
    YAML file, a nested dict, a Config, or None for the defaults. overrides: {"model.ngf": 32, ...}
    (dotted keys) or a nested dict, applied before validation.
    """
    name = "defaults"
    if source is None:
        raw: Any = {}
    elif isinstance(source, Config):
        raw, name = source.to_dict(), "Config"
    elif isinstance(source, Mapping):
        raw, name = copy.deepcopy(dict(source)), "dict"
    elif isinstance(source, (str, Path)):
        raw, name = _read_yaml(source)
    else:
        raise TypeError(f"config source must be a name, a path, a dict or a Config, got {type(source).__name__}")
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name}: a config must be a mapping of sections, got {type(raw).__name__}")
    raw = copy.deepcopy(dict(raw))
    for key, value in _flatten_overrides(overrides or {}).items():
        _set_dotted(raw, key, value, name)
    return _build(raw, source=name)


def _read_yaml(source: str | Path) -> tuple[Any, str]:
    import yaml

    path = Path(source)
    text = None
    if path.suffix in (".yml", ".yaml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        text, name = path.read_text(), str(path)
    else:
        packaged = ALIASES.get(str(source), str(source))
        entry = resources.files(__package__).joinpath("configs", f"{packaged}.yml")
        if not entry.is_file():
            raise ConfigError(f"no config named {str(source)!r}: not a file, and not one of the packaged "
                              f"configs {', '.join(available_configs())}")
        text, name = entry.read_text(), f"{source} (packaged)"
    try:
        return yaml.safe_load(text), name
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: invalid YAML: {exc}") from exc


def _flatten_overrides(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten_overrides(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _set_dotted(raw: dict, dotted: str, value: Any, name: str) -> None:
    parts = dotted.split(".")
    if len(parts) != 2:
        raise ConfigError(f"override {dotted!r} must be 'section.key'")
    section, key = parts
    if section not in SCHEMA:
        raise ConfigError(f"unknown config section {section!r} in override {dotted!r}; "
                          f"known sections: {', '.join(SCHEMA)}")
    if key not in SCHEMA[section]:
        raise ConfigError(_unknown_key_message(section, key))
    node = raw.setdefault(section, {})
    if node is None:
        node = raw[section] = {}
    if not isinstance(node, dict):
        raise ConfigError(f"{name}: section {section!r} must be a mapping, got {type(node).__name__}")
    node[key] = value


def _unknown_key_message(section: str, key: str) -> str:
    return (f"unknown config key '{section}.{key}'; known keys in {section}: {', '.join(SCHEMA[section])}")


# ----------------------------------------------------------------------------------------------------
# Validation


def _build(raw: Mapping[str, Any], source: str) -> Config:
    for section in raw:
        if section not in SCHEMA:
            raise ConfigError(f"{source}: unknown config section {section!r}; known sections: {', '.join(SCHEMA)}")
    values: dict[str, dict[str, Any]] = {}
    for section, fields in SCHEMA.items():
        given = raw.get(section) or {}
        if not isinstance(given, Mapping):
            raise ConfigError(f"{source}: section {section!r} must be a mapping, got {type(given).__name__}")
        for key in given:
            if key not in fields:
                raise ConfigError(f"{source}: {_unknown_key_message(section, str(key))}")
        values[section] = {
            key: _convert(f"{section}.{key}", given[key], field) if key in given else copy.deepcopy(field.default)
            for key, field in fields.items()
        }
    _check_consistency(values, source)
    return Config(values)


def _convert(name: str, value: Any, field: Field) -> Any:
    if value is None:
        if field.optional:
            return None
        raise ConfigError(f"{name} must be set (a {field.type.__name__}), got null")
    kind = field.type
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
    elif kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{name} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be finite, got {value}")
    elif kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
    if field.choices is not None and value not in field.choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, field.choices))}; got {value!r}")
    if field.min is not None and (value < field.min or (field.min_exclusive and value == field.min)):
        raise ConfigError(f"{name} must be {'>' if field.min_exclusive else '>='} {field.min}, got {value}")
    if field.max is not None and (value > field.max or (field.max_exclusive and value == field.max)):
        raise ConfigError(f"{name} must be {'<' if field.max_exclusive else '<='} {field.max}, got {value}")
    return value


def _check_consistency(v: dict[str, dict[str, Any]], source: str) -> None:
    model, data = v["model"], v["data"]
    if model["sigma_begin"] < model["sigma_end"]:
        raise ConfigError(f"{source}: model.sigma_begin ({model['sigma_begin']}) must be >= model.sigma_end "
                          f"({model['sigma_end']}): noise levels run from the largest to the smallest")
    factor = 2 ** architectures.DOWNSAMPLING[model["arch"]]
    if data["image_size"] % factor:
        raise ConfigError(f"{source}: data.image_size ({data['image_size']}) must be a multiple of {factor} "
                          f"for model.arch {model['arch']!r}")


# ----------------------------------------------------------------------------------------------------
# Derived values


def get_sigmas(config, device=None):
    """The config's noise levels sigma_1 > ... > sigma_L (fastscore.schedule.noise_levels) as a float32
    tensor; works on ncsn's own config namespace too (no training.noise_schedule: geometric)."""
    from ..schedule import noise_levels

    model = config.model
    schedule = getattr(getattr(config, "training", None), "noise_schedule", "geometric")
    try:
        sigmas = noise_levels(model.sigma_begin, model.sigma_end, int(model.num_classes), schedule)
    except ValueError as exc:
        raise ConfigError(f"model.sigma_begin / sigma_end / num_classes, training.noise_schedule: {exc}") from None
    return sigmas.to(device)
