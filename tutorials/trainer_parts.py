"""Tutorial: the trainer from Python: its parts, observers of your own, logging, runs that stop on non-finite losses.

Run: python tutorials/trainer_parts.py (about a minute on a CPU).
"""

# Imports sit next to the code that uses them: each section is shown on its own in the docs.
# ruff: noqa: E402

import tempfile
from pathlib import Path

work = Path(tempfile.mkdtemp(prefix="prism-trainer-"))

# --8<-- [start:config]
from prism.config import build_config
from prism.data_tools.synthetic import SynthSettings, write_synthetic_cache

cache = work / "phantoms.h5"
write_synthetic_cache(str(cache), SynthSettings(cases=6, shape=(24, 24, 24), seed=0), test_fraction=0.34)
config = build_config(None, ["model.options.width=4", "model.options.depth=3", "data.patch_size=[16,16,16]",
                             "data.batch_size=2", "train.steps=6", "train.log_every=2", "train.checkpoint_every=3",
                             "train.loggers=[csv]", f"data.cache={cache}"])
# --8<-- [end:config]

# --8<-- [start:parts]
from prism.engine.run import build_run

run = build_run(config, cache_path=cache)          # model, losses, masking, strategy, optimizer, streams, ctx
print(type(run.model).__name__, type(run.strategy).__name__, type(run.optimizer).__name__)
for _ in range(2):                                 # a loop of your own over the same parts
    parts = run.strategy.step(run.ctx)             # detached loss parts, still on the device
    run.scheduler.step()
    run.ctx.step += 1
print(f"step {run.ctx.step}: loss {float(parts['loss']):.3f}")
run.close()
# --8<-- [end:parts]

# --8<-- [start:observer]
from prism.engine.observers import Observer
from prism.engine.trainer import Trainer


class BestLoss(Observer):
    """Keeps the lowest logged loss, and stops the run when it has not improved for `patience` rows."""

    name = "best-loss"                             # its state is saved in checkpoints under this name

    def __init__(self, patience: int = 3) -> None:
        self.best, self.stale, self.patience = float("inf"), 0, patience

    def on_log(self, trainer, row):                # every train.log_every steps: interval means, floats
        if row["loss"] < self.best:
            self.best, self.stale = row["loss"], 0
        else:
            self.stale += 1
            if self.stale >= self.patience:
                trainer.request_stop(f"no better loss for {self.patience} rows")

    def on_checkpoint(self, trainer, path):
        print(f"  {path.name} written at step {trainer.ctx.step}")

    def state_dict(self):
        return {"best": self.best, "stale": self.stale}

    def load_state_dict(self, state):
        self.best, self.stale = state["best"], state["stale"]


best = BestLoss()
trainer = Trainer(config, work / "run", cache_path=cache, observers=[best])
history = trainer.fit()                            # rows: step, lr, the loss parts' interval means, samples/s
trainer.close()
print(f"best logged loss {best.best:.3f} over {len(history)} rows")
# --8<-- [end:observer]

# --8<-- [start:logging]
import logging

from prism.runs import load_run_config

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")   # the library prints nothing before
longer = load_run_config(work / "run", ["train.steps=8"])                  # the run's config.yaml, 2 steps more
trainer = Trainer(longer, work / "run", cache_path=cache, resume=True)     # resumed from its last.pt (step 6)
trainer.fit()
trainer.close()
logging.getLogger().handlers.clear()
# --8<-- [end:logging]

# --8<-- [start:nonfinite]
from prism.engine.meter import NonFiniteError

diverging = build_config(None, [*[f"{k}={v}" for k, v in {
    "model.options.width": 4, "model.options.depth": 3, "data.patch_size": "[16,16,16]", "data.batch_size": 2,
    "train.steps": 4, "train.log_every": 2, "train.loggers": "[csv]", "data.cache": cache}.items()],
    "optim.lr=1e30"])                              # a learning rate that sends the weights to infinity
try:
    Trainer(diverging, work / "diverged", cache_path=cache).fit()
except NonFiniteError as exc:                      # train.nonfinite: stop (the default); skip skips such steps
    print(f"stopped: {exc}")
# --8<-- [end:nonfinite]

# --8<-- [start:options]
import csv

from prism.engine.checkpoint import load_checkpoint

validated = work / "validated.h5"                  # a cache with a validation split
write_synthetic_cache(str(validated), SynthSettings(cases=8, shape=(24, 24, 24), seed=0), test_fraction=0.25,
                      val_fraction=0.25)
options = build_config(None, [
    "model.options.width=4", "model.options.depth=3", "data.patch_size=[16,16,16]", "data.batch_size=1",
    f"data.cache={validated}", "train.steps=12", "train.log_every=3", "train.loggers=[csv]",
    "train.ema=0.9",                                # validation, best.pt and the evaluation use the average
    "optim.schedule=cosine", "optim.warmup_steps=3",  # a linear warm-up, then half a cosine to optim.min_lr
    "train.accumulate=2",                           # each step: 2 batches of 1 (an effective batch of 2)
    "train.val_every=3", "train.val_cases=2",
    "train.early_stop={patience: 2, min_delta: 0.05}",  # 2 validations in a row without a 0.05 gain: stop
])
trainer = Trainer(options, work / "options", cache_path=validated)
rows = trainer.fit()
trainer.close()
print("learning rates:", [round(r["lr"], 5) for r in rows])
with open(work / "options" / "val_log.csv", newline="") as fh:
    print("validations:", [(r["step"], round(float(r["val_dice"]), 4)) for r in csv.DictReader(fh)])
last = load_checkpoint(work / "options" / "last.pt")
print(f"stopped at step {last['step']}; last.pt holds 'model' (the average) and 'training_model' (the weights); "
      f"early stop state {last['observers']['early_stop']}")
# --8<-- [end:options]
print("trainer_parts: ok")
