"""Task samplers for MAML and Reptile: what one task is, and its support and query batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prism.batch import Batch
from prism.errors import ConfigError
from prism.modalities import combination_masks
from prism.strategy import StepContext


@dataclass
class Task:
    name: str
    support_stream: str
    query_stream: str
    mask: torch.Tensor | None  # [M] combination for the task, or None: the train masking policy decides
    target_class: int | None = None  # class tasks: the class against the rest


def _halves(case_ids: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if len(case_ids) < 2:
        raise ConfigError(f"meta-learning needs at least 2 training cases to split support and query, got "
                          f"{len(case_ids)}")
    return case_ids[0::2], case_ids[1::2]


class TaskSampler:
    """``kind="combination"``: one modality combination per task (support and query from disjoint cases).
    ``kind="site"``: one acquisition site per task (needs at least two sites in the training split).
    ``kind="class"``: one foreground class per task against the rest (binary), support and query from disjoint
    cases that contain the class; ``held_out`` classes are never a task (they are for few-shot evaluation).
    """

    def __init__(self, ctx: StepContext, kind: str = "combination", held_out: Sequence[int] = ()) -> None:
        if kind not in ("combination", "site", "class"):
            raise ConfigError(f"strategy.options.tasks: must be 'combination', 'site' or 'class', got {kind!r}")
        self.kind = kind
        self.held_out = tuple(int(c) for c in held_out)
        cases = ctx.case_ids("train")
        if kind == "class":
            self._class_streams(ctx, cases)
            return
        if kind == "combination":
            support, query = _halves(cases)
            ctx.define_stream("support", support)
            ctx.define_stream("query", query)
            self.combos = combination_masks(ctx.model.modalities)
            return
        by_site: dict[str, list[str]] = {}
        for case in cases:
            by_site.setdefault(ctx.case_site(case) or "default", []).append(case)
        if len(by_site) < 2:
            raise ConfigError("strategy.options.tasks: 'site' needs at least two sites in the training split, "
                              f"found {sorted(by_site)}")
        self.sites = sorted(by_site)
        for site, cases in by_site.items():
            support, query = _halves(tuple(cases))
            ctx.define_stream(f"support/{site}", support)
            ctx.define_stream(f"query/{site}", query)

    def _class_streams(self, ctx: StepContext, cases: Sequence[str]) -> None:
        num_classes = ctx.model.num_classes
        bad = [c for c in self.held_out if not 0 < c < num_classes]
        if bad:
            raise ConfigError(f"strategy.options.held_out_classes: {bad} are not foreground classes "
                              f"(1..{num_classes - 1})")
        self.classes = []
        for cls in range(1, num_classes):
            if cls in self.held_out:
                continue
            members = tuple(c for c in cases if cls in ctx.case_classes(c))
            if len(members) < 2:
                continue  # a class in fewer than two training cases cannot give disjoint support and query
            support, query = _halves(members)
            ctx.define_stream(f"support/class{cls}", support)
            ctx.define_stream(f"query/class{cls}", query)
            self.classes.append(cls)
        if not self.classes:
            raise ConfigError("strategy.options.tasks: 'class' found no training class (outside held_out_classes) "
                              "present in at least two training cases")

    def sample(self, generator: torch.Generator) -> Task:
        if self.kind == "combination":
            index = int(torch.randint(len(self.combos), (1,), generator=generator))
            return Task(f"combination {index}", "support", "query", self.combos[index])
        if self.kind == "class":
            cls = self.classes[int(torch.randint(len(self.classes), (1,), generator=generator))]
            return Task(f"class {cls}", f"support/class{cls}", f"query/class{cls}", None, target_class=cls)
        site = self.sites[int(torch.randint(len(self.sites), (1,), generator=generator))]
        return Task(f"site {site}", f"support/{site}", f"query/{site}", None)

    def batch(self, ctx: StepContext, task: Task, stream: str) -> Batch:
        """A batch of ``stream`` under the task's combination (within each case's availability)."""
        if task.mask is None:
            return ctx.next_batch(stream)
        raw = ctx.raw_batch(stream)
        mask = task.mask.to(raw.availability.device)[None, :] & raw.availability
        mask = torch.where(mask.any(-1, keepdim=True), mask, raw.availability)  # a case lacking all of them
        return raw.with_mask(mask)
