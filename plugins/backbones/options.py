"""The options the built-in backbones share, one annotated type each: type, limits and description.

A backbone's factory annotates each keyword option with one of these (or its own ``Annotated`` type), so the
registry checks a config's ``model.options`` before the backbone is built and the plugin reference prints what
each option means.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

Width = Annotated[int, Field(ge=1, description="channels of the first encoder level, doubled at each level below")]
Depth = Annotated[int, Field(ge=2, description="resolution levels; every patch size must be a multiple of "
                                               "2^(depth - 1)")]
UniInEval = Annotated[bool, Field(description="also compute the per-modality parts (uni, uni_deep, uni_features) "
                                              "in eval mode, not only in train mode when a loss needs them")]
TokenDim = Annotated[Annotated[int, Field(ge=1)] | None, Field(
    description="width of the bottleneck tokens, a multiple of heads (None: 64 * width)")]
Heads = Annotated[int, Field(ge=1, description="attention heads of every transformer layer")]
PositionGrid = Annotated[int, Field(ge=1, description="side of the learned position-embedding grid, interpolated "
                                                      "to the token grid (8: the token grid of a 128^3 patch at "
                                                      "depth 5)")]
