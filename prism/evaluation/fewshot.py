"""Few-shot Dice on held-out classes: adapt to a class from N support cases, score it on the others.

For each class ``c``, each number of shots ``N`` and each of ``draws`` random draws: ``N`` support cases that
contain ``c`` (whole volumes, every available modality), the run's own adaptation rule
(``Strategy.adapt``: MAML's inner loop, Meta-SGD's rates, fine-tuning for standard runs) for ``steps`` steps on
the class task's loss (``prism.adapt.class_task_loss``: the class against the rest, the run's other held-out
classes left out), then Dice of the class (``argmax`` of ``prism.adapt.class_logits``) on query cases that
contain it. The model itself is never changed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..adapt import ADAPT_DEFAULTS, adapted_model, class_logits, class_task_loss
from ..backbone import Backbone
from ..batch import Batch
from ..data.cache_reader import CacheReader
from ..errors import ConfigError, DataError
from ..strategy import Strategy
from .adaptation import pad_to_divisor
from .metrics import mask_dice
from .writers import checkpoint_line, write_file_set

#: the defaults of ``prism-eval fewshot``: shots N, adaptation steps K, draws R
DEFAULT_SHOTS, DEFAULT_STEPS, DEFAULT_DRAWS = (1, 5), ADAPT_DEFAULTS.steps, 3


@dataclass
class FewShotResult:
    """Dice ``[classes, shots, draws]`` (mean over each draw's query cases) of one run."""

    run: str
    strategy: str
    classes: list[int]
    shots: list[int]
    steps: int
    dice: np.ndarray
    support: dict[str, list[list[str]]] = field(default_factory=dict)  # "class/shots" -> cases per draw
    checkpoint: dict[str, Any] | None = None  # the checkpoint adapted (prism.evaluation.provenance)

    def mean(self) -> np.ndarray:
        return self.dice.mean(-1)

    def sd(self) -> np.ndarray:
        return self.dice.std(-1, ddof=1) if self.dice.shape[-1] > 1 else np.zeros(self.dice.shape[:-1])

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "run": self.run, "strategy": self.strategy,
                "classes": self.classes, "shots": self.shots,
                "steps": self.steps, "dice": self.dice.tolist(), "mean": self.mean().tolist(),
                "sd": self.sd().tolist(), "support": self.support}


def _case_batch(reader: CacheReader, case_id: str, divisor: int, device: torch.device) -> tuple[Batch, tuple]:
    image, label = reader.read_case(case_id)
    shape = label.shape
    img, lab = pad_to_divisor(torch.from_numpy(image), torch.from_numpy(label).long(), divisor)
    available = torch.tensor([reader.info(case_id).availability])
    batch = Batch(image=img[None], label=lab[None], mask=available, availability=available, case_ids=[case_id])
    return batch.to(device).with_mask(available.to(device)), shape


def classes_by_case(reader: CacheReader, cases: Sequence[str]) -> dict[str, frozenset[int]]:
    """The label values each case contains (every label map read once)."""
    return {c: frozenset(int(v) for v in np.unique(reader.read_case(c)[1])) for c in cases}


def fewshot_dice(model: Backbone, strategy: Strategy, reader: CacheReader, cases: Sequence[str], *,
                 classes: Sequence[int], shots: Sequence[int] = DEFAULT_SHOTS, steps: int = DEFAULT_STEPS,
                 draws: int = DEFAULT_DRAWS, seed: int = 0, exclude: Sequence[int] = (),
                 max_query: int | None = None, lr: float | None = None, device: torch.device = torch.device("cpu"),
                 amp_dtype: torch.dtype | None = None, run: str = "", strategy_name: str = "") -> FewShotResult:
    """Few-shot Dice of ``classes`` after adapting with ``strategy.adapt`` (see the module docstring).

    Args:
        model: the trained (prepared) backbone; left unchanged.
        strategy: the run's strategy (its ``adapt`` is the rule).
        reader, cases: where support and query cases come from (those containing each class).
        classes: the classes to adapt to (typically the run's held-out classes).
        shots: support set sizes N.
        steps: adaptation steps K.
        draws: random support draws per (class, N).
        exclude: classes left out of "rest" besides the scored one (the run's other held-out classes).
        max_query: at most this many query cases per draw.
        lr: step size override (None: the strategy's own).
        amp_dtype: the autocast dtype of the adaptation steps (the run's ``train.amp``; None: full precision).

    Returns:
        A :class:`FewShotResult`.

    Raises:
        ConfigError: a class outside 1..K-1, or no shots.
        DataError: fewer cases hold a class than the largest N + 1.
    """
    k = model.num_classes
    if not shots or min(shots) < 1:
        raise ConfigError(f"--shots: need counts >= 1, got {list(shots)}")
    bad = [c for c in classes if not 0 < int(c) < k]
    if bad:
        raise ConfigError(f"--classes: {bad} are not foreground classes of this run (1..{k - 1})")
    present = classes_by_case(reader, cases)
    dice = np.zeros((len(classes), len(shots), draws))
    support_log: dict[str, list[list[str]]] = {}
    model = model.to(device)
    for i, cls in enumerate(classes):
        members = sorted(c for c in cases if int(cls) in present[c])
        if len(members) < max(shots) + 1:
            raise DataError(f"{reader.path}: class {cls} is in {len(members)} of the evaluated cases; "
                            f"{max(shots)} shots need at least {max(shots) + 1}")
        others = [c for c in exclude if int(c) != int(cls)]
        loss_fn = class_task_loss(int(cls), others)
        for j, n in enumerate(shots):
            support_log[f"{cls}/{n}"] = []
            for r in range(draws):
                order = np.random.default_rng(seed + 1000 * r + n).permutation(len(members))
                chosen = [members[t] for t in order[:n]]
                query = [members[t] for t in order[n:]][: max_query or None]
                support_log[f"{cls}/{n}"].append(chosen)
                batches = [_case_batch(reader, c, model.size_divisor, device)[0] for c in chosen]
                adapted = adapted_model(strategy.adapt, model, batches, loss_fn, amp_dtype=amp_dtype, steps=steps,
                                        lr=lr)
                model.eval()
                scores = []
                with torch.no_grad():
                    for c in query:
                        batch, shape = _case_batch(reader, c, model.size_divisor, device)
                        logits = adapted(batch.image, batch.mask).logits
                        pred = class_logits(logits, int(cls), others).argmax(1)[0][tuple(slice(s) for s in shape)]
                        truth = (batch.label[0] == int(cls))[tuple(slice(s) for s in shape)]
                        scores.append(float(mask_dice(pred.bool()[None, None], truth[None])[0, 0]))
                dice[i, j, r] = float(np.mean(scores))
    return FewShotResult(run=run, strategy=strategy_name, classes=[int(c) for c in classes],
                         shots=[int(n) for n in shots], steps=int(steps), dice=dice, support=support_log)


def fewshot_markdown(results: Sequence[FewShotResult]) -> str:
    """One table: a row per (run, class), a column per number of shots, Dice % as mean +- sd over draws."""
    if not results:
        return ""
    shots = results[0].shots
    lines = [f"Few-shot Dice (%) after {results[0].steps} adaptation steps, mean +- sd over draws; "
             + "; ".join(f"{r.run or 'run'}: {checkpoint_line(r.checkpoint)}" for r in results), "",
             "| run | strategy | class | " + " | ".join(f"{n}-shot" for n in shots) + " |",
             "|---|---|---|" + "---|" * len(shots)]
    for res in results:
        mean, sd = res.mean() * 100, res.sd() * 100
        for i, cls in enumerate(res.classes):
            cells = [f"{mean[i, j]:.1f} +- {sd[i, j]:.1f}" for j in range(len(shots))]
            lines.append(f"| {res.run} | {res.strategy} | {cls} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_fewshot(results: Sequence[FewShotResult], out_dir: Path) -> list[Path]:
    """``fewshot.json`` and ``fewshot.md`` in ``out_dir``, as one set (a failure leaves the old set whole).

    fewshot.json: ``{"checkpoint": <the first run's checkpoint record>, "runs": [one result per run]}``, each
    result with its own run's ``checkpoint``.
    """
    text = json.dumps({"checkpoint": results[0].checkpoint if results else None,
                       "runs": [r.to_dict() for r in results]}, indent=2) + "\n"
    markdown = fewshot_markdown(results)
    return write_file_set(Path(out_dir), {"fewshot.json": lambda tmp: tmp.write_text(text, encoding="utf-8"),
                                          "fewshot.md": lambda tmp: tmp.write_text(markdown, encoding="utf-8")})
