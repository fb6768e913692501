"""Training an NCSN: the loop (loop.py), checkpoint files, the EMA of the weights, the run's log, and
building all of it from a config (build.py)."""
from .build import (
    DeviceUnavailable,
    build_model_for,
    build_trainer,
    data_spec_from_config,
    grid_writer,
    load_model,
    load_training_data,
    make_sampler,
    preprocess_from_config,
    resolve_device,
    settings_from_config,
)
from .checkpoint import (
    CHECKPOINT_NAME,
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    save_atomic,
)
from .ema import EMA, load_averaged
from .lock import RunLocked, run_lock
from .logger import Logger
from .loop import SampleFn, Trainer, TrainResult, TrainSettings, eta_warning, make_optimizer

__all__ = [
    "CHECKPOINT_NAME", "CheckpointError", "DeviceUnavailable", "EMA", "FORMAT", "FORMAT_VERSION", "Logger",
    "RunLocked", "SampleFn", "TrainResult", "TrainSettings", "Trainer", "build_model_for", "build_trainer",
    "checkpoint_path", "data_spec_from_config", "eta_warning", "grid_writer", "load_averaged", "load_checkpoint",
    "load_model", "load_training_data", "make_optimizer", "make_sampler", "preprocess_from_config", "resolve_device",
    "run_lock", "save_atomic", "settings_from_config",
]
