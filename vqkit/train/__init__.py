"""One training loop for every model: device, AMP, checkpoints, resume, logging."""

from vqkit.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_trainer_state,
    load_weights,
    resolve_checkpoint,
    rewrite_weights,
    save_checkpoint,
    save_latest,
)
from vqkit.train.device import (
    autocast_context,
    get_rng_state,
    move_to_device,
    resolve_device,
    seed_everything,
    set_rng_state,
)
from vqkit.train.loop import DivergenceError, TrainConfig, TrainResult, fit
from vqkit.train.sampler import EpochBatchSampler

__all__ = [
    "CheckpointError",
    "DivergenceError",
    "EpochBatchSampler",
    "TrainConfig",
    "TrainResult",
    "autocast_context",
    "fit",
    "get_rng_state",
    "latest_checkpoint",
    "load_trainer_state",
    "load_weights",
    "move_to_device",
    "resolve_checkpoint",
    "rewrite_weights",
    "resolve_device",
    "save_checkpoint",
    "save_latest",
    "seed_everything",
    "set_rng_state",
]
