import numpy as np
import pytest
import torch

from prism.evaluation.inference import predict_combinations
from prism.evaluation.metrics import BRATS_REGIONS, region_dice
from prism.modalities import BRATS_MODALITIES, combination_masks
from prism.registry import create_backbone


def test_region_dice_by_hand():
    target = torch.tensor([0, 1, 2, 3, 3, 0])
    pred = torch.tensor([[0, 1, 2, 3, 0, 2],  # WT: P={1,2,3,5} G={1,2,3,4} -> 2*3/8; TC: P={1,3} G={1,3,4} -> 4/5
                         [0, 0, 0, 0, 0, 0]])  # empty prediction: 0 where the reference has the region
    d = region_dice(pred, target, BRATS_REGIONS, 4)
    np.testing.assert_allclose(d[0].numpy(), [6 / 8, 4 / 5, 2 * 1 / 3])
    np.testing.assert_allclose(d[1].numpy(), [0, 0, 0])


def test_empty_reference_and_empty_prediction_scores_one():
    target = torch.tensor([0, 2, 2, 0])  # no TC, no ET
    pred = torch.tensor([[0, 2, 0, 0], [0, 2, 3, 0]])
    d = region_dice(pred, target, BRATS_REGIONS, 4)
    np.testing.assert_allclose(d[0].numpy(), [2 / 3, 1.0, 1.0])
    np.testing.assert_allclose(d[1].numpy(), [1.0, 0.0, 0.0])


def test_et_postprocessing_drops_small_et():
    target = torch.zeros(10, dtype=torch.long)
    pred = torch.tensor([[3, 3, 0, 0, 0, 0, 0, 0, 0, 0]])
    assert region_dice(pred, target, BRATS_REGIONS, 4)[0, 2] == 0
    assert region_dice(pred, target, BRATS_REGIONS, 4, et_postprocess_voxels=3)[0, 2] == 1
    assert region_dice(pred, target, BRATS_REGIONS, 4, et_postprocess_voxels=2)[0, 2] == 0


def test_region_dice_agrees_with_monai():
    monai_metrics = pytest.importorskip("monai.metrics")
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (12, 12, 12), generator=g)
    pred = torch.randint(0, 4, (3, 12, 12, 12), generator=g)
    ours = region_dice(pred, target, BRATS_REGIONS, 4)
    table = BRATS_REGIONS.table(4)
    y = table[:, target].unsqueeze(0).expand(3, -1, -1, -1, -1).float()
    y_pred = table[:, pred].transpose(0, 1).float()
    theirs = monai_metrics.DiceMetric(include_background=True, reduction="none")(y_pred, y)
    torch.testing.assert_close(ours.float(), theirs.float())


def test_batched_combinations_equal_one_pass_per_combination():
    torch.manual_seed(0)
    model = create_backbone("multi_unet", BRATS_MODALITIES, 4, width=4, depth=3).eval()
    image = torch.randn(4, 14, 16, 18)  # padded to a multiple of 4 inside
    masks = combination_masks(BRATS_MODALITIES)
    batched = predict_combinations(model, image, masks, device=torch.device("cpu"))
    assert batched.shape == (15, 14, 16, 18)
    for i in range(15):
        single = predict_combinations(model, image, masks[i:i + 1], device=torch.device("cpu"), combos_per_pass=1)
        assert torch.equal(batched[i], single[0]), i
