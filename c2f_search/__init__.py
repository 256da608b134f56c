"""c2f-search: find coarse-to-fine training schedules for audio spectrogram transformers.

Public API (everything else is private):
    Schedule, Phase, parse_schedule   - schedules and their text form
    compress                          - temporal compression of a fbank batch
    transfer_weights                  - carry a model to the next phase's token grid
    train_flops, eval_flops           - FLOPs per sample
    create_model, list_models         - the model registry
    TrainConfig, Data, Run            - one multi-phase training run, without Ray
    pareto_front, hypervolume_2d      - Pareto analysis of search results
"""
from .compress import compress
from .flops import eval_flops, train_flops
from .models import create_model, list_models, register_model
from .schedule import METHODS, Phase, Schedule, ScheduleError, parse_schedule
from .transfer import transfer_weights

__version__ = "0.1.0"


def __getattr__(name):  # the training and search modules pull in more; load them on first use
    if name in ("TrainConfig", "Data", "Run", "save_checkpoint", "load_checkpoint"):
        from . import train
        return getattr(train, name)
    if name in ("pareto_front", "hypervolume_2d"):
        from . import pareto
        return getattr(pareto, name)
    raise AttributeError(name)


__all__ = ["Schedule", "Phase", "parse_schedule", "ScheduleError", "METHODS", "compress", "transfer_weights",
           "train_flops", "eval_flops", "create_model", "list_models", "register_model", "TrainConfig", "Data",
           "Run", "save_checkpoint", "load_checkpoint", "pareto_front", "hypervolume_2d"]
