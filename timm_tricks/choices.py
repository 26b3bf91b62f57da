"""Every fixed list of choices, declared once: the config schema validates against these tuples and the modules
that implement them (schedule, losses, augment, models, data, tune) check and document the same tuples.

This module imports nothing, so the config and the command line can use it without loading torch.
"""

from __future__ import annotations

# Learning-rate schedules (timm_tricks.schedule; sources in its docstring).
SCHEDULES = ("constant", "cosine", "step", "exponential", "linear", "piecewise")

# Label smoothing (timm_tricks.losses): "paper" is He et al., CVPR 2019, Sec. 5.2 (1 - eps on the true class,
# eps / (K - 1) elsewhere); "uniform" is torch's and timm's eps / K on every class.
SMOOTHING_FORMS = ("paper", "uniform")

# Training transforms (timm_tricks.augment): the BoT Sec. 2 pipeline, Myrtle's batched crop/flip/cutout, none.
AUGMENT_PIPELINES = ("bot", "batched", "none")

# Colour augmentation of the BoT pipeline: HSV scaling in [0.6, 1.4] (BoT Sec. 2) or GluonCV's colour jitter.
# Resize interpolations of the file pipelines (torchvision's InterpolationMode values that timm's pretrained
# configs name).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
COLOR_MODES = ("hsv", "jitter")

# Weight initialisation of the ResNet ladder (timm_tricks.models.resnet_tricks): timm's Kaiming, or Xavier (BoT Sec. 2).
INIT_SCHEMES = ("kaiming", "xavier")

# Mixed precision (accelerate's names); BoT Sec. 3.2 trains in FP16.
PRECISIONS = ("no", "fp16", "bf16")

# Experiment trackers of train.log_with: every one accelerate's Accelerator(log_with=...) takes (accelerate's
# LoggerType, accelerate/utils/dataclasses.py, less "all"); "none" logs to none (timm_tricks.build).
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")

# Data sources (timm_tricks.data), and the training-set size of each kind that has a fixed one: the command line
# derives steps per epoch from it without loading the data.
SOURCE_KINDS = ("digits", "synthetic", "folder", "cifar10", "cifar100", "timm")
TRAIN_SET_SIZES = {
    "folder": 1_281_167,  # ImageNet-1k train (Russakovsky et al. 2015)
    "timm": 1_281_167,
    "cifar10": 50_000,
    "cifar100": 50_000,
    "digits": 1_438,  # 80% of scikit-learn's 1,797 digits (timm_tricks.data.load_digits)
}

# Searches, ablations and the trainer's best checkpoint (timm_tricks.tune_space, tune, ladder, train): the metrics
# every epoch reports; the ema_* ones are those of the EMA weights (only with ema.enabled).
METRICS = ("eval_top1", "eval_top5", "eval_loss", "train_loss", "ema_eval_top1", "ema_eval_top5", "ema_eval_loss")
MODES = ("max", "min")
DISTRIBUTIONS = ("loguniform", "uniform", "quniform", "randint", "choice", "grid")
SCHEDULERS = ("asha", "pbt", "fifo")
SEARCHERS = ("optuna", "random")


def metric_mode(metric: str) -> str:
    """``min`` for a loss (lower is better), ``max`` for an accuracy."""
    return "min" if metric.endswith("loss") else "max"


def is_better(metric: str, value: float, best: float | None) -> bool:
    """Whether ``value`` of ``metric`` beats ``best`` (None: nothing yet) in the metric's mode; ties do not."""
    if best is None:
        return True
    return value < best if metric_mode(metric) == "min" else value > best
