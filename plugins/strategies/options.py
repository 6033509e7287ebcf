"""The options the built-in meta-strategies share, one annotated type each: type, limits and description.

A strategy's factory annotates each keyword option with one of these (or its own ``Annotated`` type), so the
registry checks a config's ``strategy.options`` before the strategy is built and the plugin reference prints
what each option means.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

InnerSteps = Annotated[int, Field(ge=1, description="K: inner-loop gradient steps per task on its support batches "
                                                    "(also the steps of adapt)")]
InnerLR = Annotated[float, Field(gt=0, description="a: the inner-loop step size (also that of adapt)")]
TasksPerStep = Annotated[int, Field(ge=1, description="tasks (episodes) per outer step")]
SiteOrCombination = Annotated[Literal["combination", "site"], Field(
    description="what a task is: one modality combination (support and query from disjoint cases) or one "
                "acquisition site")]
AdaptParams = Annotated[str | list[str], Field(
    description="the parameters the inner loop and adapt update: 'all', 'head' (ANIL), 'body' (BOIL) or glob "
                "patterns over parameter names; the outer step trains all of them")]
