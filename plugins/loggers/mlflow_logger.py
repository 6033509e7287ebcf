"""MLflow: the run's parameters, metrics, evaluation and heatmap in an MLflow tracking store (by default a file
store under the run folder)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from prism.errors import ConfigError
from prism.logger import Logger, LoggerRun, flatten

#: MLflow takes at most this many parameters or metrics per ``log_batch`` call
BATCH = 100
#: how a run ended -> MLflow's run status
MLFLOW_STATUS = {"completed": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}


def _import_mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise ConfigError("train.loggers: logger 'mlflow' needs the mlflow package: pip install "
                          "'prism-seg[mlflow]' (or mlflow-skinny)") from None
    return mlflow


class MlflowLogger(Logger):
    """MLflow: parameters, metrics, the evaluation and its heatmap (by default a file store in ``RUN/mlruns``).

    The config goes in as parameters (dotted names, ``optim.lr``), scalars as metrics ``<group>/<name>``
    (``train/loss``, ``val/val_dice``) at their step, the evaluation as metrics ``eval/<metric>/<region>`` with
    ``eval.json`` and ``eval.md`` as artifacts, and the Dice heatmap as an image.

    By default the store is a local file store in ``RUN/mlruns`` (``mlflow ui --backend-store-uri RUN/mlruns``
    shows it); MLflow 3 keeps file stores in maintenance mode, so this logger sets ``MLFLOW_ALLOW_FILE_STORE=true``
    for it unless the environment sets that variable. A resumed run continues the same MLflow run (its id is in
    the checkpoint); values it logged after its checkpoint stay in the store. Needs ``pip install
    'prism-seg[mlflow]'``.
    """

    def __init__(
        self, *,
        experiment: Annotated[str, Field(min_length=1, description="the MLflow experiment the run goes into "
                                                                   "(created when missing)")] = "prism",
        tracking_uri: Annotated[str | None, Field(
            description="the MLflow tracking store (a server's http URI, sqlite:///..., a folder); None: a file "
                        "store in RUN/mlruns")] = None,
        run_name: Annotated[str | None, Field(description="the MLflow run's name (None: the run folder's "
                                                          "name)")] = None,
    ) -> None:
        self.mlflow = _import_mlflow()
        self.experiment, self.tracking_uri, self.run_name = experiment, tracking_uri, run_name
        self.client: Any = None
        self.run_id: str | None = None

    def start(self, run: LoggerRun) -> None:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        uri = self.tracking_uri or (run.run_dir / "mlruns").resolve().as_uri()
        if "://" not in uri or uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        if self.run_id is not None:  # a resumed run: the same MLflow run, if the store still has it
            try:
                self.client.update_run(self.run_id, status="RUNNING")
                return
            except MlflowException:
                self.run_id = None
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found is not None else self.client.create_experiment(self.experiment)
        created = self.client.create_run(experiment_id, run_name=self.run_name or run.name,
                                         tags={"prism.run_dir": str(run.run_dir.resolve())})
        self.run_id = created.info.run_id
        params = [Param(key, str(value)) for key, value in flatten(run.config).items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + BATCH])

    def _metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in values.items()]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + BATCH])

    def log_scalars(self, group: str, values: Mapping[str, float], step: int) -> None:
        self._metrics({f"{group}/{k}": v for k, v in values.items() if k != "step"}, step)

    def log_image(self, name: str, image: np.ndarray, step: int) -> None:
        self.client.log_image(self.run_id, image, artifact_file=f"{name}.png")

    def log_report(self, summary: Mapping[str, float], files: Sequence[Path]) -> None:
        self._metrics({f"eval/{k}": v for k, v in summary.items()}, 0)
        for path in files:
            self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str) -> None:
        if self.client is not None and self.run_id is not None:
            self.client.set_terminated(self.run_id, status=MLFLOW_STATUS.get(status, "FINISHED"))

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id} if self.run_id is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id")
