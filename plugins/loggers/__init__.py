"""Built-in loggers (experiment trackers): CSV files and TensorBoard always; MLflow and Weights & Biases with their
optional extras (``pip install 'prism-seg[mlflow]'``, ``'prism-seg[wandb]'``)."""

from __future__ import annotations

from prism.registry import hookimpl

from .csv_logger import CsvLogger
from .mlflow_logger import MlflowLogger
from .tensorboard_logger import TensorBoardLogger
from .wandb_logger import WandbLogger


@hookimpl
def register_loggers(register):
    register("csv", CsvLogger)
    register("tensorboard", TensorBoardLogger)
    register("mlflow", MlflowLogger)
    register("wandb", WandbLogger)
