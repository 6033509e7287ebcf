import math

import numpy as np
import pytest
import torch

from prism.evaluation.hausdorff import BRATS_EMPTY_HD95, hd95
from prism.evaluation.inference import predict_combinations
from prism.evaluation.metrics import BRATS_REGIONS, region_dice, region_masks
from prism.evaluation.options import EvalOptions
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
        single = predict_combinations(model, image, masks[i:i + 1], device=torch.device("cpu"),
                                      options=EvalOptions(combos_per_pass=1))
        assert torch.equal(batched[i], single[0]), i


# ---- HD95 ------------------------------------------------------------------------------------------------------



def _box(shape, lo, hi):
    m = torch.zeros(shape, dtype=torch.bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


def test_hd95_of_shifted_boxes_by_hand():
    # 3x3x3 cube G in slices 2-4 of axis 0 and the same cube P in slices 4-6, 2 mm per slice along axis 0.
    # P's 26 surface voxels: slice 4 (9) lies on G's surface -> 0 mm; the ring of slice 5 (8) -> one slice, 2 mm;
    # slice 6 (9) -> 4 mm. Sorted, 95% of the way (index 23.75 of 0..25) falls among the 4 mm values; G -> P is
    # the mirror image. HD95 = 4 mm.
    g = _box((10, 8, 8), (2, 2, 2), (5, 5, 5))
    p = _box((10, 8, 8), (4, 2, 2), (7, 5, 5))
    d = hd95(p[None, None], g[None], (2.0, 1.0, 1.0))
    assert d.shape == (1, 1)
    assert float(d[0, 0]) == pytest.approx(4.0)


def test_hd95_percentile_interpolates_like_numpy():
    # one far outlier voxel in the prediction: HD95 stays small, the maximum would not.
    g = _box((12, 12, 40), (2, 2, 2), (10, 10, 10))
    p = g.clone()
    p[6, 6, 35] = True
    d = float(hd95(p[None, None], g[None])[0, 0])
    # P -> G: 0 for G's 8^3 - 6^3 = 296 surface voxels, 26 for the outlier (z = 35 to the face z = 9); G -> P: 0.
    dists = np.zeros(8**3 - 6**3 + 1)
    dists[-1] = 35 - 9
    assert d == pytest.approx(np.percentile(dists, 95))
    assert float(hd95(p[None, None], g[None], percentile=100)[0, 0]) == pytest.approx(26.0)  # the plain maximum
    assert d < 1.0


def test_hd95_empty_set_conventions():
    g = _box((6, 6, 6), (1, 1, 1), (4, 4, 4))
    empty = torch.zeros_like(g)
    pred = torch.stack([empty, g, empty])[:, None]  # [3 predictions, 1 region]
    d = hd95(pred, empty[None])
    assert d[:, 0].tolist() == [0.0, BRATS_EMPTY_HD95, 0.0]  # both empty -> 0; one empty -> BraTS diagonal (monai)
    assert hd95(pred, g[None])[0, 0] == pytest.approx(373.1287, abs=1e-3)
    left_out = hd95(pred, g[None], empty_value=math.nan)
    assert math.isnan(left_out[0, 0]) and left_out[1, 0] == 0


def test_hd95_matches_monai_with_anisotropic_spacing():
    monai_metrics = pytest.importorskip("monai.metrics")
    pytest.importorskip("scipy")
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 4, (14, 12, 16), generator=g)
    target[:, :, :5] = 0
    pred = torch.randint(0, 4, (3, 14, 12, 16), generator=g)
    pred[0] = target  # identical -> 0
    p, t = region_masks(pred, target, BRATS_REGIONS, 4)
    spacing = (1.0, 1.5, 0.7)
    ours = hd95(p, t, spacing)
    theirs = monai_metrics.compute_hausdorff_distance(p.float(), t[None].expand(3, -1, -1, -1, -1).float(),
                                                      include_background=True, percentile=95, spacing=spacing)
    np.testing.assert_allclose(ours.numpy(), theirs.double().numpy(), rtol=1e-5, atol=1e-5)
    assert (ours[0] == 0).all()


def test_et_postprocessing_also_applies_to_hd95():
    target = torch.zeros(6, 6, 6, dtype=torch.long)
    pred = torch.zeros(1, 6, 6, 6, dtype=torch.long)
    pred[0, 2, 2, 2] = 3  # one ET voxel against no ET
    p, t = region_masks(pred, target, BRATS_REGIONS, 4)
    assert hd95(p, t)[0, 2] == BRATS_EMPTY_HD95
    p, t = region_masks(pred, target, BRATS_REGIONS, 4, et_postprocess_voxels=2)
    assert hd95(p, t)[0, 2] == 0 and hd95(p, t)[0, 1] == BRATS_EMPTY_HD95  # the voxel stays in TC (as necrosis)
