"""JsonLines: an experiment tracker that writes one JSON line per logged row into the run folder."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from prism.logger import Logger, LoggerRun


class JsonLines(Logger):
    """One JSON line per row of scalars (``{"group": "train", "step": 2, "loss": ...}``) in ``RUN/<filename>``."""

    def __init__(self, *,
                 filename: Annotated[str, Field(pattern=r"^[\w.-]+$", description="the file in the run "
                                                                                    "folder")] = "scalars.jsonl",
                 ) -> None:
        self.filename = filename
        self.path: Path | None = None
        self.rows = 0  # state: saved in checkpoints, like any plugin's

    def start(self, run: LoggerRun) -> None:
        self.path = run.run_dir / self.filename  # keep every file under the run folder
        if run.resumed_from is None:  # a new run: start the file anew
            self.path.write_text("")
        elif self.path.exists():  # a resumed run: drop the rows logged after its checkpoint
            lines = [line for line in self.path.read_text().splitlines()
                     if json.loads(line)["step"] <= run.resumed_from]
            self.path.write_text("".join(line + "\n" for line in lines))

    def log_scalars(self, group: str, values: Mapping[str, float], step: int) -> None:
        assert self.path is not None, "start() first"
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"group": group, **values, "step": step}) + "\n")
        self.rows += 1

    def log_report(self, summary: Mapping[str, float], files: Sequence[Path]) -> None:
        self.log_scalars("eval", summary, -1)  # the evaluation's headline numbers, as a row of their own

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}  # numbers, text, lists, dicts: a weights-only checkpoint stores them

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = int(state.get("rows", 0))
