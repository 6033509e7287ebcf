"""Weights & Biases: the run in W&B, offline by default (files under the run folder, ``wandb sync`` uploads them)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from prism.errors import ConfigError
from prism.logger import Logger, LoggerRun


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise ConfigError("train.loggers: logger 'wandb' needs the wandb package: pip install "
                          "'prism-seg[wandb]'") from None
    return wandb


class WandbLogger(Logger):
    """Weights & Biases, offline by default: the config, scalars, the heatmap and the evaluation's summary.

    The config is the W&B run's config, scalars are ``<group>/<name>`` (``train/loss``, ``val/val_dice``) at their
    step, the Dice heatmap an image and the evaluation's headline numbers the run's summary
    (``eval/<metric>/<region>``).

    ``mode: offline`` (the default) writes everything under ``RUN/wandb/offline-run-*`` and needs no account or
    network; ``wandb sync RUN/wandb/offline-run-*`` uploads it later. A resumed run continues the same W&B run id
    (it is in the checkpoint). Needs ``pip install 'prism-seg[wandb]'``.
    """

    def __init__(
        self, *,
        project: Annotated[str, Field(min_length=1, description="the W&B project")] = "prism",
        entity: Annotated[str | None, Field(description="the W&B team or user (None: your default)")] = None,
        name: Annotated[str | None, Field(description="the W&B run's display name (None: the run folder's "
                                                      "name)")] = None,
        mode: Annotated[Literal["offline", "online"], Field(
            description="offline: files under RUN/wandb only (wandb sync uploads them); online: live")] = "offline",
        tags: Annotated[list[str], Field(description="tags of the W&B run")] = [],  # noqa: B006 - never mutated
    ) -> None:
        self.wandb = _import_wandb()
        self.project, self.entity, self.name, self.mode, self.tags = project, entity, name, mode, list(tags)
        self.run: Any = None
        self.run_id: str | None = None

    def start(self, run: LoggerRun) -> None:
        wandb = self.wandb
        self.run = wandb.init(
            project=self.project, entity=self.entity, name=self.name or run.name, tags=self.tags or None,
            mode=self.mode, dir=str(run.run_dir), id=self.run_id, resume="allow" if self.run_id else None,
            config=dict(run.config), reinit="create_new",
            settings=wandb.Settings(console="off", silent=True, save_code=False),
        )
        self.run_id = self.run.id

    def log_scalars(self, group: str, values: Mapping[str, float], step: int) -> None:
        self.run.log({f"{group}/{k}": float(v) for k, v in values.items() if k != "step"}, step=step)

    def log_image(self, name: str, image: np.ndarray, step: int) -> None:
        self.run.log({name: self.wandb.Image(image)}, step=step)

    def log_report(self, summary: Mapping[str, float], files: Sequence[Path]) -> None:
        self.run.summary.update({f"eval/{k}": float(v) for k, v in summary.items()})

    def finish(self, status: str) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if status == "completed" else 1)
            self.run = None

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id} if self.run_id is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id")
