"""c2f-search: find coarse-to-fine training schedules for audio spectrogram transformers.

Public API (everything else is private):
    Schedule, Phase, parse_schedule           - schedules and their text form
    Geometry                                  - the input geometry of one phase
    Method, get_method, list_methods,
    register_method, compress                 - compression methods (one module each)
    ModelFamily, create_model, list_models,
    register_model, get_family                - models by name and their families' phase adapters
    transfer_weights, build_for_phase         - carry a model to the next phase's geometry
    train_flops, eval_flops                   - FLOPs per sample
    TrainConfig, Data, Run                    - one multi-phase training run, without Ray
    PhaseController, FixedSchedule, fork_point - who decides the phases; when runs share a prefix
    save_checkpoint, load_checkpoint, atomic_write
    pareto_front, hypervolume_2d              - Pareto analysis of search results
    CoarseToFine, Step, phase_fbank,
    read_schedule_file, ScheduleFile,
    epoch_order                               - coarse-to-fine in your own training loop (docs/own_loop.md)
    CoarseToFineCallback                      - the same in Lightning (the `lightning` extra; not in __all__)
    C2FError                                  - the base of every error a user can fix
"""

from .compress import Method, compress, get_method, list_methods, register_method
from .config import TrainConfig
from .errors import C2FError, ScheduleError
from .files import atomic_write, load_checkpoint, save_checkpoint
from .geometry import Geometry
from .models import ModelFamily, create_model, get_family, list_models, register_model
from .models.flops import eval_flops, train_flops
from .models.phase import build_for_phase, transfer_weights
from .schedule import Phase, Schedule, parse_schedule
from .schedule_file import ScheduleFile, read_schedule_file

__version__ = "0.2.0"

_LAZY = {
    "Data": "data",
    "Run": "train",
    "PhaseController": "controllers",
    "FixedSchedule": "controllers",
    "fork_point": "controllers",
    "pareto_front": "analysis.pareto",
    "hypervolume_2d": "analysis.pareto",
    "CoarseToFine": "train.own_loop",
    "Step": "train.own_loop",
    "phase_fbank": "train.own_loop",
    "epoch_order": "train.pipeline",
    "CoarseToFineCallback": "lightning_callback",
}


def __getattr__(name):  # training, data and Pareto modules pull in more; load them on first use
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)


__all__ = [
    "Schedule",
    "Phase",
    "parse_schedule",
    "ScheduleError",
    "Geometry",
    "Method",
    "get_method",
    "list_methods",
    "register_method",
    "compress",
    "ModelFamily",
    "create_model",
    "list_models",
    "register_model",
    "get_family",
    "transfer_weights",
    "build_for_phase",
    "train_flops",
    "eval_flops",
    "TrainConfig",
    "Data",
    "Run",
    "PhaseController",
    "FixedSchedule",
    "fork_point",
    "save_checkpoint",
    "load_checkpoint",
    "atomic_write",
    "pareto_front",
    "hypervolume_2d",
    "C2FError",
    "CoarseToFine",
    "Step",
    "phase_fbank",
    "read_schedule_file",
    "ScheduleFile",
    "epoch_order",
]
