"""A Trainer, a sampler or a trained model from a fastscore Config: data, network, noise levels."""
from __future__ import annotations

import os
from dataclasses import asdict

import torch

from ..data import BUNDLED, BatchStream, DataSpec, Preprocess, TensorImages, get_dataset
from ..distributed import SINGLE, Group
from .checkpoint import CheckpointError, check_checkpoint, checkpoint_path, read_checkpoint_file
from .ema import load_averaged
from .loop import SampleFn, Trainer, TrainSettings


class DeviceUnavailable(RuntimeError):
    """The run asks for a device this machine does not have."""


def resolve_device(name: str | None) -> torch.device:
    """"auto" (or None): cuda when a GPU is visible, else cpu; otherwise the named device, checked."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(f"device {name!r} was asked for but no CUDA GPU is visible; use --device cpu")
    return device


def data_spec_from_config(config, image_folder: str | None = None, split: str = "train") -> DataSpec:
    """ncsn's data section as a DataSpec: MNIST without data.root is the bundled 5,000-digit subset."""
    d = config.data
    if image_folder:
        return DataSpec("folder", image_folder, d.image_size, split)
    if d.dataset == "MNIST":
        return DataSpec("mnist" if d.root else BUNDLED, d.root, d.image_size, split)
    return DataSpec({"CIFAR10": "cifar10", "CELEBA": "celeba"}[d.dataset], d.root, d.image_size, split)


def load_training_data(config, spec: DataSpec):
    """The dataset of `spec`, cut to data.subset images if set, checked against data.channels."""
    dataset = get_dataset(spec)
    channels = dataset[0][0].shape[0]
    if channels != config.data.channels:
        raise ValueError(f"the {spec.name} images have {channels} channels but the config says "
                         f"data.channels = {config.data.channels}")
    subset = config.data.subset
    if subset is not None and subset < len(dataset):
        if isinstance(dataset, TensorImages):
            dataset = TensorImages(dataset.images[:subset], dataset.labels[:subset])
        else:
            dataset = torch.utils.data.Subset(dataset, range(subset))
    return dataset


def settings_from_config(config, **overrides) -> TrainSettings:
    t, o, f = config.training, config.optim, config.fastscore
    values = dict(
        n_iters=t.n_iters, batch_size=t.batch_size, optimizer=o.optimizer, lr=o.lr, beta1=o.beta1,
        beta2=o.beta2, eps=o.eps, weight_decay=o.weight_decay, amsgrad=o.amsgrad,
        anneal_power=t.anneal_power, level_power=t.level_power, ema_rate=f.ema_rate if f.ema else 0.0,
        bf16=f.bf16, seed=f.seed,
        log_every=f.log_freq, checkpoint_every=t.snapshot_freq,
        backend=None if f.backend == "auto" else f.backend)
    values.update(overrides)
    return TrainSettings(**values)


def preprocess_from_config(config) -> Preprocess:
    return Preprocess(random_flip=config.data.random_flip, dequantize=True,
                      logit_transform=config.data.logit_transform)


def build_model_for(config, device: torch.device) -> torch.nn.Module:
    from ..models import build_model

    model = build_model(config, fuse_norm_act=config.fastscore.fuse_norm_act).to(device)
    if config.fastscore.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_sampler(model, config, sigmas, device, n_steps_each: int | None = None,
                 step_lr: float | None = None, denoise: bool | None = None, *, sampler: str = "langevin",
                 levels=None, **options):
    """The sampler called `sampler` (fastscore.samplers.SAMPLERS) for the config's data shape.

    Annealed Langevin ("langevin") takes the config's sampling section, which the arguments override;
    for the others n_steps_each is their steps per level (consistent annealing's steps, the corrector
    steps of "pc"; None: their default) and options their own arguments (eta, snr)."""
    from ...samplers import create

    s, d = config.sampling, config.data
    common = dict(levels=levels, shape=(d.channels, d.image_size, d.image_size), device=device,
                  backend=None if config.fastscore.backend == "auto" else config.fastscore.backend)
    if sampler == "langevin":
        return create(sampler, model, sigmas, steps=n_steps_each or s.n_steps_each, step_lr=step_lr or s.step_lr,
                      denoise=s.final_denoise if denoise is None else denoise, **common, **options)
    return create(sampler, model, sigmas, steps=n_steps_each, **common, **options)


def grid_writer(config, sigmas, directory: str, count: int, device, preprocess: Preprocess,
                group: Group = SINGLE) -> SampleFn:
    """A sample_fn that writes <directory>/step_XXXXXXX.png, the same seed each time (comparable grids).
    In a distributed run every process draws its share of the grid and rank 0 writes it."""
    from ..generate import generate
    from ..images import save_png

    seed = config.sampling.seed if config.sampling.seed is not None else config.fastscore.seed

    def write(model, step):
        x = generate(make_sampler(model, config, sigmas, device), count, seed, group, progress=False,
                     to_image=preprocess.invert)
        if x is not None:
            save_png(x, os.path.join(directory, f"step_{step:07d}.png"))

    return write


def build_trainer(config, workdir: str | None, *, image_folder: str | None = None, device=None,
                  sample_every: int = 0, sample_count: int = 36, progress: bool = True, group: Group = SINGLE,
                  **setting_overrides) -> Trainer:
    """A Trainer for a fastscore Config (fastscore.ncsn.config.load_config): data, model, noise levels,
    optimizer and sample grids as the config says; `setting_overrides` replace TrainSettings fields.
    group: the processes of a torchrun launch (fastscore.ncsn.distributed.init, which also gives each its
    device); the network is then wrapped in DistributedDataParallel."""
    from ..config import get_sigmas

    device = resolve_device(device or config.fastscore.device)
    spec = data_spec_from_config(config, image_folder)
    dataset = load_training_data(config, spec)
    settings = settings_from_config(config, sample_every=sample_every, **setting_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)  # the initial weights are a function of the run's seed
        model = build_model_for(config, device)
    forward = None
    if group.distributed:
        forward = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.fastscore.compile:
        forward = torch.compile(forward if forward is not None else model)
    sigmas = get_sigmas(config)
    preprocess = preprocess_from_config(config)
    sample_fn = None
    if workdir is not None and sample_count > 0:
        sample_fn = grid_writer(config, sigmas, os.path.join(workdir, "samples"), sample_count, device,
                                preprocess, group)
    stream = BatchStream(dataset, settings.batch_size, settings.seed, config.fastscore.num_workers)
    return Trainer(model, sigmas, stream, settings, preprocess, workdir=workdir, config=config.to_dict(),
                   sample_fn=sample_fn, progress=progress, forward=forward,
                   meta={"data": asdict(spec), "images": len(dataset)}, group=group)


def load_model(checkpoint: str | dict, device=None, ema: bool = True, config=None):
    """(model, config, checkpoint) from a checkpoint, in eval mode, holding the EMA weights when the run
    kept them and `ema` is set.

    checkpoint: a file written by `fastscore train` (or its run directory, or the loaded dict), or an
    ermongroup/ncsn or ncsnv2 checkpoint file as published, which holds no config: then `config` (a
    packaged name, a YAML path or a Config) says what the run was trained with, and the returned
    checkpoint dict is built from it (sigmas, preprocessing, config; "published" names the format)."""
    from ..config import Config, load_config
    from .published import is_published, read_published

    device = resolve_device(device)
    raw = checkpoint if isinstance(checkpoint, dict) else read_checkpoint_file(checkpoint, map_location=device)
    if not isinstance(checkpoint, dict) and is_published(raw):
        path = checkpoint_path(checkpoint)
        published = read_published(raw, path)
        if config is None:
            raise CheckpointError(f"{path} is an ermongroup/{published.kind} checkpoint, which holds no config: "
                                  "pass --config with the one it was trained with (e.g. cifar10, or its YAML)")
        config = load_config(config)
        model = build_model_for(config, device)
        try:
            model.load_state_dict(published.model)
        except RuntimeError as exc:
            raise CheckpointError(f"{path} does not fit the network of the config given ({config.model.arch}, "
                                  f"ngf {config.model.ngf}): {str(exc).splitlines()[0]}") from exc
        if ema and published.ema is not None:
            load_averaged(model, published.ema)
        from ..config import get_sigmas

        ckpt = {"step": published.step if published.step is not None else "?", "sigmas": get_sigmas(config),
                "preprocess": asdict(preprocess_from_config(config)), "config": config.to_dict(),
                "ema": {"shadow": published.ema} if published.ema is not None else None,
                "published": published.kind}
        return model.eval(), config, ckpt
    ckpt = raw if isinstance(checkpoint, dict) else check_checkpoint(raw, checkpoint)
    config = Config.from_dict(ckpt["config"])
    model = build_model_for(config, device)
    model.load_state_dict(ckpt["model"])
    if ema and ckpt.get("ema") is not None:
        load_averaged(model, ckpt["ema"]["shadow"])
    return model.eval(), config, ckpt
