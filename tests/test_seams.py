"""prism.seams' checks one by one, and how the registry attributes a plugin's exception (blame): to the plugin whose
code raised, never re-wrapped, a third party's own error class kept one line."""

from __future__ import annotations

import pytest
import torch

from prism.batch import Batch
from prism.engine.losses import LossSet, WeightedTerm
from prism.errors import ConfigError, PluginBug, PluginError, PrismError
from prism.loss import LossResult, LossTerm
from prism.outputs import SegOutput
from prism.registry import blame, get_registry, register
from prism.seams import (
    check_loss_result,
    check_mask,
    check_seg_output,
    check_state_round_trip,
    check_state_storable,
    check_step_result,
    first_difference,
)

OWNER = "meta-strategy 'x' (dist 1.0)"


# ---- the strategy's step -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, fragment", [
    (torch.tensor(1.0), "returned Tensor float32 [] on cpu from step()"),
    (1.0, "returned float from step()"),
    (None, "returned None from step()"),
    ([torch.tensor(1.0)], "returned list of 1 from step()"),
    ({"total": torch.tensor(1.0)}, "returned a dict without 'loss' from step() (keys ['total'])"),
    ({"loss": 0.5}, "returned 'loss' as float from step()"),
    ({"loss": torch.ones(2)}, "returned 'loss' as Tensor float32 [2] on cpu from step()"),
])
def test_step_results_breaking_the_contract_name_the_strategy(value, fragment):
    with pytest.raises(PluginBug) as exc:
        check_step_result(value, OWNER)
    assert str(exc.value).startswith(OWNER + " " + fragment)
    assert "expected a dict of named scalar tensors holding 'loss'" in str(exc.value)


def test_a_dict_of_scalars_with_loss_passes():
    parts = {"loss": torch.tensor(0.5), "dice": torch.ones(1)}
    assert check_step_result(parts, OWNER) == parts


# ---- masks -------------------------------------------------------------------------------------------------------

AVAILABLE = torch.tensor([[True, False, True], [False, True, False]])


@pytest.mark.parametrize("mask, fragment", [
    (AVAILABLE.float(), "returned a float32 mask; expected torch.bool"),
    (AVAILABLE[:, :2], "returned a mask of shape [2, 2] for availability [2, 3]"),
    (torch.tensor([[True, False, False], [False, False, False]]), "returned a mask with no modality in row(s) [1] "
                                                                  "(availability [0, 1, 0])"),
    (torch.tensor([[True, True, False], [False, True, False]]), "marked an unavailable modality as available in "
                                                                "row(s) [0] (mask [1, 1, 0], availability [1, 0, 1])"),
    ([[True]], "returned list of 1; expected a bool tensor [2, 3]"),
])
def test_masks_breaking_the_contract_name_the_policy(mask, fragment):
    with pytest.raises(PluginBug, match=r"^masking policy 'p' ") as exc:
        check_mask(mask, AVAILABLE, "masking policy 'p'")
    assert fragment in str(exc.value)


def test_mask_values_are_read_only_when_asked():
    empty = torch.zeros(2, 3, dtype=torch.bool)
    assert check_mask(empty, AVAILABLE, "p", values=False) is empty  # shape and dtype only: no host read
    assert torch.equal(check_mask(AVAILABLE.clone(), AVAILABLE, "p"), AVAILABLE)


# ---- SegOutput ---------------------------------------------------------------------------------------------------

def _output(**parts) -> SegOutput:
    return SegOutput(logits=parts.pop("logits", torch.zeros(2, 3, 4, 4, 4)), **parts)


EXPECT = {"batch": 2, "spatial": (4, 4, 4), "num_classes": 3, "num_modalities": 2}


@pytest.mark.parametrize("output, required, fragment", [
    (torch.zeros(2, 3, 4, 4, 4), ("logits",), "returned Tensor float32 [2, 3, 4, 4, 4] on cpu; expected a "
                                              "prism.outputs.SegOutput"),
    (_output(logits=torch.zeros(2, 2, 4, 4, 4)), ("logits",), "part 'logits' of shape [2, 2, 4, 4, 4]; expected "
                                                              "[2, 3, 4, 4, 4]"),
    (_output(), ("logits", "uni"), "returned no ['uni'] (present: ['logits'])"),
    (_output(uni=torch.zeros(2, 3, 3, 4, 4, 4)), ("logits",), "part 'uni' of shape [2, 3, 3, 4, 4, 4]; expected "
                                                              "[2, 2, 3, 4, 4, 4]"),
    (_output(deep=torch.zeros(2, 3, 2, 2, 2)), ("logits",), "part 'deep' as Tensor"),
    (_output(deep=[torch.zeros(2, 3, 8, 8, 8)]), ("logits",), "larger than the input [4, 4, 4]"),
    (_output(logits=torch.zeros(2, 3, 4, 4, 4, dtype=torch.long)), ("logits",), "part 'logits' as int64; expected "
                                                                               "floating"),
])
def test_outputs_breaking_the_contract_name_the_backbone(output, required, fragment):
    with pytest.raises(PluginBug, match=r"^backbone 'b' ") as exc:
        check_seg_output(output, "backbone 'b'", required=required, **EXPECT)
    assert fragment in str(exc.value)


def test_a_conforming_output_passes():
    out = _output(uni=torch.zeros(2, 2, 3, 4, 4, 4), deep=[torch.zeros(2, 3, 2, 2, 2)],
                  features=torch.zeros(2, 5, 4, 4, 4))
    assert check_seg_output(out, "b", required=("logits", "uni", "deep"), **EXPECT) is out


# ---- loss values -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("result, fragment", [
    (0.5, "returned float; expected a prism.loss.LossResult"),
    (LossResult(total=0.5), "returned a total of float; expected a floating scalar tensor"),
    (LossResult(total=torch.ones(2)), "returned a total of Tensor float32 [2] on cpu"),
    (LossResult(total=torch.tensor(1)), "returned a total of Tensor int64 []"),
    (LossResult(total=torch.tensor(float("inf"))), "returned a non-finite total (inf)"),
    (LossResult(total=torch.tensor(1.0), parts={"a": torch.ones(3)}), "returned part 'a' as Tensor float32 [3]"),
])
def test_loss_values_breaking_the_contract_name_the_term(result, fragment):
    with pytest.raises(PluginBug, match=r"^loss 't' ") as exc:
        check_loss_result(result, "loss 't'")
    assert fragment in str(exc.value)


def test_a_loss_total_on_another_device_is_refused():
    with pytest.raises(PluginBug, match="returned its total on meta; expected it on cpu"):
        check_loss_result(LossResult(total=torch.zeros((), device="meta")), "loss 't'", device=torch.device("cpu"),
                          finite=False)


# ---- state dicts -------------------------------------------------------------------------------------------------

class Stateful:
    def __init__(self, state, restore=True):
        self.state, self.restore = state, restore

    def state_dict(self):
        return self.state

    def load_state_dict(self, state):
        if self.restore:
            self.state = state


@pytest.mark.parametrize("state, fragment", [
    ([1, 2], "returned list of 2 from state_dict(); expected a dict"),
    ({"gen": torch.Generator()}, "cannot store"),
    ({"fn": len}, "cannot store"),
])
def test_states_a_checkpoint_cannot_store_name_the_plugin(state, fragment):
    with pytest.raises(PluginBug, match=r"^masking policy 'p' ") as exc:
        check_state_storable(Stateful(state), "masking policy 'p'")
    assert fragment in str(exc.value)


def test_a_state_that_does_not_restore_is_named_with_where_it_differs():
    state = {"step": 3, "inner": {"w": torch.arange(3.0)}}
    check_state_round_trip(Stateful(state), Stateful({"step": 3, "inner": {"w": torch.arange(3.0)}}), "s")
    with pytest.raises(PluginBug, match=r"does not restore its state: after load_state_dict\(state_dict\(\)\), "
                                        r"state: keys \['inner', 'step'\] vs \[\]"):
        check_state_round_trip(Stateful(state), Stateful({}, restore=False), "s")


def test_first_difference_walks_nested_states():
    a = {"x": [torch.tensor([1.0, float("nan")]), 2], "y": "a"}
    assert first_difference(a, {"x": [torch.tensor([1.0, float("nan")]), 2], "y": "a"}) is None
    assert first_difference(a, {"x": [torch.tensor([1.0, 2.0]), 2], "y": "a"}) == "state['x'][0]: values differ"
    assert first_difference(a, {"x": [a["x"][0], 3], "y": "a"}) == "state['x'][1]: 2 vs 3"


# ---- the loss set checks its first evaluation only ---------------------------------------------------------------

class Half(LossTerm):
    """Mean of the logits (a scalar), or a vector after ``broken`` is set."""

    broken = False

    def __call__(self, output, batch):
        total = output.logits.mean()
        return LossResult(total=total * torch.ones(2) if self.broken else total)


def test_loss_set_checks_the_first_evaluation_then_nothing():
    register("loss", "half", Half)
    term = get_registry().build("loss", "half", (("a", "b"), 3))
    losses = LossSet([WeightedTerm("half", 1.0, term, entry=get_registry().get("loss", "half"))])
    batch = Batch(torch.zeros(2, 2, 4, 4, 4), torch.zeros(2, 4, 4, 4, dtype=torch.long),
                  torch.ones(2, 2, dtype=torch.bool), torch.ones(2, 2, dtype=torch.bool))
    term.broken = True
    with pytest.raises(PluginBug, match=r"^loss 'half' \(plugin 'in-process'\) returned a total of Tensor"):
        losses(_output(), batch)
    assert not losses.checked
    term.broken = False
    losses(_output(), batch)
    assert losses.checked
    term.broken = True  # later evaluations are not checked (no host read per step): no PluginBug is raised
    try:
        losses(_output(), batch)
    except PluginBug:  # pragma: no cover - the failure this test guards against
        pytest.fail("a later evaluation was checked")
    except RuntimeError:
        pass  # the unchecked vector total fails further on (the loss shares stack scalars)


# ---- blame -------------------------------------------------------------------------------------------------------

class ThirdPartyError(ConfigError):
    """A third party's error class with a constructor of its own."""

    def __init__(self, option: str, value: object) -> None:
        super().__init__(f"{option}={value!r} is not allowed")


class Policy:
    """Raises what it is told to when called."""

    def __init__(self, modalities, *, error: str = "none"):
        self.error = error

    def __call__(self, availability, generator):
        if self.error == "third_party":
            raise ThirdPartyError("level", 7)
        raise KeyError("inside the policy")


def test_nested_blame_keeps_the_inner_plugins_bug():
    register("masking", "raiser", Policy)
    register("strategy", "caller", lambda: object())
    inner, outer = get_registry().get("masking", "raiser"), get_registry().get("strategy", "caller")
    with pytest.raises(PluginBug) as exc:
        with blame(outer, "running step 1"):
            with blame(inner, "drawing a mask"):
                raise KeyError("x")
    assert str(exc.value).startswith("masking policy 'raiser' (plugin 'in-process') from plugin 'in-process' raised "
                                     "KeyError while drawing a mask")
    assert isinstance(exc.value.__cause__, KeyError) and exc.value.plugin_entry is inner


def test_an_exception_is_blamed_on_the_plugin_whose_code_raised():
    register("masking", "raiser", Policy)
    register("strategy", "caller", lambda: object())
    policy = get_registry().build("masking", "raiser", (("a",),))
    with pytest.raises(PluginBug) as exc:
        with blame(get_registry().get("strategy", "caller"), "running step 4"):
            policy(torch.ones(1, 1, dtype=torch.bool), torch.Generator())
    assert str(exc.value) == ("masking policy 'raiser' (plugin 'in-process') from plugin 'in-process' raised KeyError "
                              "while running step 4 (called by meta-strategy 'caller' (plugin 'in-process'))")


def test_a_third_party_error_class_stays_a_one_line_user_error_naming_its_plugin():
    register("masking", "raiser", Policy)
    policy = get_registry().build("masking", "raiser", (("a",),), {"error": "third_party"})
    with pytest.raises(PrismError) as exc:
        with blame(get_registry().get("masking", "raiser"), "drawing a mask"):
            policy(torch.ones(1, 1, dtype=torch.bool), torch.Generator())
    assert isinstance(exc.value, ConfigError) and exc.value.exit_code == 2
    assert str(exc.value) == "masking policy 'raiser' (plugin 'in-process'): level=7 is not allowed"

    def build(modalities):
        raise ThirdPartyError("size", "huge")

    register("masking", "refuses", build)
    with pytest.raises(ConfigError, match=r"^masking policy 'refuses' \(plugin 'in-process'\): size='huge' is not"):
        get_registry().build("masking", "refuses", (("a",),))


def test_a_factory_that_cannot_take_the_contract_arguments_is_refused_at_registration():
    with pytest.raises(PluginError, match=r"^backbone 'flat' from plugin 'in-process': its factory must take "
                                          r"\(modalities, num_classes\) positionally"):
        register("backbone", "flat", lambda *, width=1: None)
    with pytest.raises(PluginError, match="is not callable"):
        register("strategy", "nothing", 3)
