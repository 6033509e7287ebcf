"""``check_masking_policy``: the MaskingPolicy contract, checked on any registered masking policy."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from ..modalities import BRATS_MODALITIES
from ..registry import get_registry
from ..seams import check_mask, check_state_round_trip
from ._report import Checks, ConformanceReport, expect, registered

#: the checks of :func:`check_masking_policy`, in the order they run
MASKING_CHECKS = (
    "builds", "mask_contract", "reproducible_from_its_generator", "leaves_global_rng_alone",
    "availability_unchanged", "state_round_trip",
)


def availabilities(modalities: int, seed: int = 0) -> list[torch.Tensor]:
    """Availability matrices a policy meets: every case complete, one modality per case, random non-empty rows,
    and batches of 1 and 17 samples."""
    g = torch.Generator().manual_seed(seed)

    def random_rows(b: int) -> torch.Tensor:
        rows = torch.rand(b, modalities, generator=g) < 0.5
        rows[torch.arange(b), torch.randint(modalities, (b,), generator=g)] = True  # never an empty row
        return rows

    single = torch.zeros(modalities, modalities, dtype=torch.bool)
    single[torch.arange(modalities), torch.arange(modalities)] = True
    return [torch.ones(4, modalities, dtype=torch.bool), single, random_rows(8), random_rows(1), random_rows(17)]


class _MaskingSuite:
    def __init__(self, name: str, options: Mapping[str, Any], modalities: tuple[str, ...], draws: int) -> None:
        self.name, self.options, self.modalities, self.draws = name, dict(options), modalities, draws
        self.owner = get_registry().get("masking", name)

    def policy(self) -> Any:
        return get_registry().build("masking", self.name, (self.modalities,), self.options)

    def masks(self, policy: Any, seed: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return [policy(a, g) for _ in range(self.draws) for a in availabilities(len(self.modalities), seed)]

    # ---- the checks -------------------------------------------------------------------------------------------
    def builds(self) -> Any:
        policy = self.policy()
        expect(callable(policy), f"built {type(policy).__name__}, which is not callable")
        for method in ("state_dict", "load_state_dict"):
            expect(callable(getattr(policy, method, None)), f"has no {method}() (subclass prism.masking."
                                                            "MaskingPolicy)")
        return policy

    def mask_contract(self, policy: Any) -> None:
        g = torch.Generator().manual_seed(0)
        for _ in range(self.draws):
            for availability in availabilities(len(self.modalities)):
                check_mask(policy(availability, g), availability, self.owner)

    def reproducible_from_its_generator(self, policy: Any) -> None:
        torch.manual_seed(1)
        a = self.masks(self.policy(), seed=5)
        torch.manual_seed(2)  # another global state: the masks must not depend on it
        b = self.masks(self.policy(), seed=5)
        expect(all(torch.equal(x, y) for x, y in zip(a, b, strict=True)),
               "two policies drawing from generators seeded alike gave different masks (draw every random number "
               "from the generator passed in)")

    def leaves_global_rng_alone(self, policy: Any) -> None:
        state = torch.get_rng_state()
        self.masks(policy, seed=3)
        expect(torch.equal(state, torch.get_rng_state()), "drawing masks changed torch's global random state (draw "
                                                          "from the generator passed in)")

    def availability_unchanged(self, policy: Any) -> None:
        g = torch.Generator().manual_seed(4)
        for availability in availabilities(len(self.modalities)):
            before = availability.clone()
            policy(availability, g)
            expect(torch.equal(before, availability), "the policy changed the availability it was given in place")

    def state_round_trip(self, policy: Any) -> None:
        self.masks(policy, seed=6)  # a policy with a curriculum has moved on by now
        fresh = self.policy()
        check_state_round_trip(policy, fresh, self.owner)
        a, b = self.masks(policy, seed=7), self.masks(fresh, seed=7)
        expect(all(torch.equal(x, y) for x, y in zip(a, b, strict=True)),
               "a policy restored from another's state draws different masks from the same generator")


def check_masking_policy(plugin: str | Callable[..., Any], *, options: Mapping[str, Any] | None = None,
                         modalities: Sequence[str] = BRATS_MODALITIES, draws: int = 20, skip: Iterable[str] = (),
                         raise_on_failure: bool = True) -> ConformanceReport:
    """Run prism's masking-policy suite (``MASKING_CHECKS``) on a masking policy, every check whatever the others
    gave.

    The checks: it builds a callable policy with ``state_dict``/``load_state_dict``; every mask it draws, for
    complete cases, single-modality cases, random availabilities and batches of 1 to 17, is a bool ``[B, M]``
    mask with at least one modality per row and never one the case lacks; masks depend only on the generator
    passed in (not on torch's global random state, which it leaves alone);
    the availability it is given is not changed; its state survives a weights-only checkpoint, and a policy
    restored from it draws the same masks.

    Args:
        plugin: a registered masking-policy name, or its factory (registered in this process for the check).
        options: the policy's options.
        modalities: the modality names it is built for.
        draws: how many times each availability is drawn.
        skip: names of checks to leave out (reported as skipped).
        raise_on_failure: raise :class:`ConformanceError` listing every failed check (else return the report).

    Returns:
        The :class:`ConformanceReport`.

    Raises:
        ConformanceError: a check failed (every failure named in one message).
    """
    with registered("masking", plugin) as (name, subject):
        checks = Checks(subject, MASKING_CHECKS, skip)
        suite = _MaskingSuite(name, options or {}, tuple(modalities), draws)
        with torch.random.fork_rng(devices=[]):
            policy = checks.run("builds", suite.builds)
            if policy is None:
                checks.not_run("the masking policy did not build")
                return checks.finish(raise_on_failure)
            for check in MASKING_CHECKS[1:]:
                checks.run(check, getattr(suite, check), policy)
        return checks.finish(raise_on_failure)
