"""PASSION's objective as options of the existing terms: one known-value test per documented difference.

Each expected value is computed here from PASSION's code as read (the PASSION repository, Jun-Jie-Shi/PASSION:
`code/utils/criterions.py`, `code/models/rfnet.py`, `code/train.py`), with numpy float64 loops (trilinear upsampling
written out separably), sharing no code with prism.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from test_losses_known_values import ref_proto_gap

from conftest import PASSION_FIXTURES
from prism.batch import Batch
from prism.data.availability import read_passion_csv
from prism.engine.builder import split_missing_rates
from prism.outputs import SegOutput
from prism.plugins.losses import PreferenceRegulariser, kl_probs, pixel_kl_loss, proto_gap
from prism.plugins.losses.preference import batch_preference_gate
from prism.registry import create_loss

MODS = ("flair", "t1ce", "t1", "t2")
K = 3
FLOOR = 0.005


def mr2468_availability() -> list[tuple[bool, ...]]:
    """The availability of PASSION's mr2468 training split (its CSV, vendored), in MODS order."""
    return list(read_passion_csv(PASSION_FIXTURES / "Brats2020_imb_split_mr2468.csv", MODS).values())


def preset_options(name: str = "passion_brats2020_mr2468") -> dict:
    """A preset's first loss term's options, ``missing_rates: from_split`` resolved on the mr2468 training split
    as a run built from that split's cache resolves it."""
    from prism.presets import load_preset

    options = dict(load_preset(name)["losses"][0]["options"])
    if options.get("missing_rates") == "from_split":
        options["missing_rates"] = split_missing_rates(mr2468_availability(), MODS, "losses.0.options")
    return options


def test_from_split_counts_the_split_as_passion_counts_its_csv():
    # PASSION: modal_weight = iter_per_epoch / modal_num, modal_num summed over the CSV's masks (219 cases, batch 1)
    rows = mr2468_availability()
    counts = [sum(r[i] for r in rows) for i in range(4)]
    assert len(rows) == 219 and counts == [90, 135, 184, 43]  # FLAIR, T1ce, T1, T2, read off the CSV
    term = create_loss("prism", MODS, 4, **preset_options())
    assert term.modal_weight == pytest.approx([219 / 90, 219 / 135, 219 / 184, 219 / 43], rel=1e-6)
    assert [round(w, 3) for w in term.modal_weight] == [2.433, 1.622, 1.190, 5.093]


def test_from_split_refuses_a_modality_no_case_has():
    from prism.errors import ConfigError

    with pytest.raises(ConfigError, match=r"losses.0.options.missing_rates: from_split: modality t2 is available "
                                          r"in none of the 2 training cases"):
        split_missing_rates([(True, True, True, False), (True, False, True, False)], MODS,
                            "losses.0.options.missing_rates")


def test_clamped_kl_weight_known_value():
    # one voxel, 2 classes, T = 4: teacher logits (0, -28), student (0, 0); PASSION: pred_t = clamp(p_t, 0.005)
    # is the weight and inside the log, T^2 * mean over classes of pred_t (log pred_t - log pred_s)
    p_t = [1 / (1 + math.exp(-7.0)), math.exp(-7.0) / (1 + math.exp(-7.0))]
    clamped = [max(p, FLOOR) for p in p_t]
    passion = 16 * sum(q * (math.log(q) - math.log(0.5)) for q in clamped) / 2
    weight_unclamped = 16 * sum(p * (math.log(q) - math.log(0.5)) for p, q in zip(p_t, clamped, strict=True)) / 2
    assert passion == pytest.approx(5.3486, abs=1e-4) and weight_unclamped == pytest.approx(5.4993, abs=1e-4)
    student, teacher = torch.zeros(1, 1, 2, 1), torch.tensor([0.0, -28.0]).view(1, 2, 1)
    mask = torch.ones(1, 1, dtype=torch.bool)
    common = {"temperature": 4.0, "direction": "teacher_student", "class_reduction": "mean", "prob_floor": FLOOR}
    got = pixel_kl_loss(student, teacher, mask, clamped_weight=True, **common)
    assert float(got) == pytest.approx(passion, rel=1e-5)
    assert float(pixel_kl_loss(student, teacher, mask, **common)) == pytest.approx(weight_unclamped, rel=1e-5)
    # the same through kl_probs, without temperature: the clamped weight only changes the floored class
    p = torch.tensor([[0.999, 0.001]])
    q = torch.tensor([[0.5, 0.5]])
    assert float(kl_probs(q, p, floor=FLOOR, direction="teacher_student", clamped_weight=True)) == pytest.approx(
        0.999 * math.log(0.999 / 0.5) + FLOOR * math.log(FLOOR / 0.5), rel=1e-6)


def rnd(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


def softmax(z: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def upsample_1d(x: np.ndarray, axis: int, out: int, align_corners: bool = False) -> np.ndarray:
    """Linear interpolation along ``axis`` to ``out`` samples: half-pixel centres (align_corners=False) or the end
    samples on the end samples (align_corners=True, source i (n - 1) / (out - 1))."""
    n = x.shape[axis]
    result = []
    for i in range(out):
        if align_corners:
            src = i * (n - 1) / (out - 1) if out > 1 else 0.0
        else:
            src = max((i + 0.5) * n / out - 0.5, 0.0)
        lo = min(int(math.floor(src)), n - 1)
        hi = min(lo + 1, n - 1)
        t = src - lo
        result.append((1 - t) * np.take(x, lo, axis=axis) + t * np.take(x, hi, axis=axis))
    return np.stack(result, axis=axis)


def upsample(x: np.ndarray, size: tuple[int, ...], align_corners: bool = False) -> np.ndarray:
    """Trilinear upsampling of the last three axes (separable)."""
    for i, s in enumerate(size):
        x = upsample_1d(x, x.ndim - 3 + i, s, align_corners)
    return x


def ref_seg_passion(probs: np.ndarray, label: np.ndarray) -> float:
    """PASSION's segmentation term for probabilities [B, K, ...]: weighted CE (w_c = 1 - |y_c|/|y| per sample,
    p clamped to [0.005, 1]) + Dice over all classes (numerator smooth 0, denominator 1e-7), summed over the batch."""
    total = 0.0
    for b in range(probs.shape[0]):
        p = probs[b].reshape(K, -1)
        y = label[b].reshape(-1)
        onehot = np.stack([(y == c).astype(float) for c in range(K)])
        w = 1 - onehot.sum(1) / y.size
        ce = -np.mean([sum(w[c] * onehot[c, v] * math.log(min(max(p[c, v], FLOOR), 1.0)) for c in range(K))
                       for v in range(y.size)])
        dice = 1 - np.mean([2 * (p[c] * onehot[c]).sum() / (p[c].sum() + onehot[c].sum() + 1e-7) for c in range(K)])
        total += ce + dice
    return total


SEG_PASSION = {"class_weighting": "passion", "smooth_nr": 0.0, "smooth_dr": 1e-7, "batch_reduction": "sum",
               "prob_floor": FLOOR}


def test_segmentation_term_as_passion_computes_it():
    logits, label = rnd(0, 2, K, 4, 4, 2, scale=3.0), torch.randint(0, K, (2, 4, 4, 2), generator=torch.Generator()
                                                                        .manual_seed(1))
    out = SegOutput(logits=logits)
    batch = Batch(torch.zeros(2, 4, 4, 4, 2), label, torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 4, dtype=bool))
    got = create_loss("fuse", MODS, K, **SEG_PASSION)(out, batch).total
    expected = ref_seg_passion(softmax(logits.numpy(), 1), label.numpy())
    assert float(got) == pytest.approx(expected, rel=1e-5)
    seeds = create_loss("fuse", MODS, K)(out, batch).total
    assert abs(float(seeds) - expected) > 1e-3  # the options change the value


@dataclass
class WithRegion0(SegOutput):
    region0: torch.Tensor | None = None


def test_prm_on_upsampled_probabilities_with_passion_level_weights():
    g = torch.Generator().manual_seed(2)
    label = torch.randint(0, K, (1, 8, 8, 8), generator=g)
    deep = [rnd(3, 1, K, 4, 4, 4, scale=2.0), rnd(4, 1, K, 2, 2, 2, scale=2.0)]
    out = WithRegion0(logits=rnd(5, 1, K, 8, 8, 8), deep=deep, region0=rnd(6, 1, K, 8, 8, 8, scale=2.0))
    batch = Batch(torch.zeros(1, 4, 8, 8, 8), label, torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 4, dtype=bool))
    weights = [0.25, 0.125]
    term = create_loss("prm", MODS, K, label_resample="upsample", weights=weights, region0_weight=0.5, **SEG_PASSION)
    assert "region0" in term.needs
    got = term(out, batch).total
    # PASSION's PRM: the full-resolution region map at 1/2, then each coarser level's upsampled probabilities
    expected = 0.5 * ref_seg_passion(softmax(out.region0.numpy(), 1), label.numpy()) + \
        sum(w * ref_seg_passion(upsample(softmax(d.numpy(), 1), (8, 8, 8)), label.numpy())
            for w, d in zip(weights, deep, strict=True))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    prism = create_loss("prism", MODS, K, label_resample="upsample", deep_weights=weights, prm_region0=0.5,
                        uni_weight=0.0, **SEG_PASSION)
    out.uni, out.uni_deep = rnd(7, 1, 4, K, 8, 8, 8), [rnd(8 + i, 1, 4, *d.shape[1:]) for i, d in enumerate(deep)]
    out.features, out.uni_features = rnd(11, 1, 2, 8, 8, 8), rnd(12, 1, 4, 2, 8, 8, 8)
    assert float(prism(out, batch).parts["prm"]) == pytest.approx(expected, rel=1e-5)
    # PASSION upsamples with align_corners=True
    aligned = 0.5 * ref_seg_passion(softmax(out.region0.numpy(), 1), label.numpy()) + \
        sum(w * ref_seg_passion(upsample(softmax(d.numpy(), 1), (8, 8, 8), True), label.numpy())
            for w, d in zip(weights, deep, strict=True))
    term = create_loss("prm", MODS, K, label_resample="upsample", weights=weights, region0_weight=0.5,
                       align_corners=True, **SEG_PASSION)
    assert float(term(out, batch).total) == pytest.approx(aligned, rel=1e-5)
    assert abs(aligned - expected) > 1e-4 * expected  # the option changes the value


def ref_pixel_kl_passion(student: list[np.ndarray], teacher: list[np.ndarray], mask: np.ndarray, mu: float,
                         align_corners: bool = False) -> np.ndarray:
    """Per modality [M], batch mean: sum_s 2^-s mu^2 mean_{k,v} p_t (log p_t - log p_s), level s > 0 upsampled
    (trilinear, on softmax(z / mu)) to full resolution, both probabilities clamped at 0.005."""
    b, m = mask.shape
    size = teacher[0].shape[2:]
    out = np.zeros(m)
    for s, (zs, zt) in enumerate(zip(student, teacher, strict=True)):
        ps, pt = softmax(zs / mu, 2), softmax(zt / mu, 1)
        if s:
            ps, pt = upsample(ps, size, align_corners), upsample(pt, size, align_corners)
        for bi in range(b):
            for mi in range(m):
                if mask[bi, mi]:
                    qs, qt = np.maximum(ps[bi, mi], FLOOR), np.maximum(pt[bi], FLOOR)
                    out[mi] += 2.0**-s * mu**2 * np.mean(pt[bi] * (np.log(qt) - np.log(qs))) / b
    return out


def test_pixel_kl_as_passion_computes_it():
    student = [rnd(6, 2, 4, K, 4, 4, 4, scale=20.0), rnd(7, 2, 4, K, 2, 2, 2, scale=20.0)]
    teacher = [rnd(8, 2, K, 4, 4, 4, scale=20.0), rnd(9, 2, K, 2, 2, 2, scale=20.0)]
    mask = torch.tensor([[True, False, True, True], [False, True, True, False]])
    options = {"direction": "teacher_student", "class_reduction": "mean", "scale_by_temperature": True}
    got = pixel_kl_loss(student[0], teacher[0], mask, student_deep=student[1:], teacher_deep=teacher[1:],
                        temperature=4.0, prob_floor=FLOOR, deep_resample="upsample", deep_weights=[0.5],
                        reduction="per_modality", **options)
    expected = ref_pixel_kl_passion([s.numpy() for s in student], [t.numpy() for t in teacher], mask.numpy(), 4.0)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5)
    unclamped = pixel_kl_loss(student[0], teacher[0], mask, student_deep=student[1:], teacher_deep=teacher[1:],
                              temperature=4.0, deep_resample="upsample", deep_weights=[0.5],
                              reduction="per_modality", **options)
    assert not np.allclose(unclamped.double().numpy(), expected, rtol=1e-2)  # the clamp matters at this scale
    aligned = pixel_kl_loss(student[0], teacher[0], mask, student_deep=student[1:], teacher_deep=teacher[1:],
                            temperature=4.0, prob_floor=FLOOR, deep_resample="upsample", deep_weights=[0.5],
                            align_corners=True, reduction="per_modality", **options)
    np.testing.assert_allclose(aligned.double().numpy(), ref_pixel_kl_passion(
        [s.numpy() for s in student], [t.numpy() for t in teacher], mask.numpy(), 4.0, True), rtol=1e-5)
    term = create_loss("pixel_kl", MODS, K, variant="passion", prob_floor=FLOOR, deep_resample="upsample",
                       deep_weights=[0.5])
    out = SegOutput(logits=teacher[0], deep=teacher[1:], uni=student[0], uni_deep=student[1:])
    batch = Batch(torch.zeros(2, 4, 4, 4, 4), torch.zeros(2, 4, 4, 4, dtype=torch.long), mask, mask.clone())
    assert float(term(out, batch).total) == pytest.approx(expected.sum(), rel=1e-5)


def test_prototype_classes_in_every_sample_and_passion_eps():
    student, teacher = rnd(10, 2, 3, 4, 3, 3, 2, scale=2e-6), rnd(11, 2, 4, 3, 3, 2, scale=2e-6)
    label = torch.randint(0, 4, (2, 3, 3, 2), generator=torch.Generator().manual_seed(12))
    label[1] = label[1].clamp(max=2)

    def ref(eps: float) -> np.ndarray:  # cos(x, y) = x.y / (max(|x|, eps) max(|y|, eps)), PASSION's class rule
        def cos(x, y):
            return float(x @ y / (max(np.linalg.norm(x), eps) * max(np.linalg.norm(y), eps)))

        b, m = student.shape[:2]
        fs, ft = student.numpy().reshape(b, m, 4, -1), teacher.numpy().reshape(b, 4, -1)
        y = label.numpy().reshape(b, -1)
        classes = [c for c in range(4) if all((y[i] == c).any() for i in range(b))]
        gap = np.zeros((b, m))
        for bi in range(b):
            for mi in range(m):
                vals = []
                for c in classes:
                    ps, pt = fs[bi, mi][:, y[bi] == c].mean(1), ft[bi][:, y[bi] == c].mean(1)
                    ss = np.array([cos(fs[bi, mi][:, v], ps) for v in range(y.shape[1])])
                    st = np.array([cos(ft[bi][:, v], pt) for v in range(y.shape[1])])
                    vals.append(np.mean((ss - st) ** 2))
                gap[bi, mi] = np.mean(vals)
        return gap

    got = proto_gap(student, teacher, label, num_classes=4, class_reduction="mean", class_presence="batch", eps=1e-5)
    np.testing.assert_allclose(got.double().numpy(), ref(1e-5), rtol=1e-4, atol=1e-9)
    assert not np.allclose(ref(1e-5), ref(1e-8), rtol=1e-3)  # at these feature norms eps matters
    big = proto_gap(student * 1e6, teacher * 1e6, label, num_classes=4, class_reduction="mean",
                    class_presence="batch", eps=1e-5)
    np.testing.assert_allclose(big.double().numpy(), ref_proto_gap(student.numpy() * 1e6, teacher.numpy() * 1e6,
                                                                   label.numpy(), 4, "passion"), rtol=1e-4)


def test_batch_gate_from_absolute_distances():
    dist = torch.tensor([[0.2, 0.4, 0.0, 0.6], [0.5, 0.1, 0.3, 0.0]])
    mask = torch.tensor([[True, True, False, True], [True, True, True, False]])
    # rp_iter_m = sum_b mask (dist / mean_b - 1): means 0.4 and 0.3
    score = [(0.2 / 0.4 - 1) + (0.5 / 0.3 - 1), (0.4 / 0.4 - 1) + (0.1 / 0.3 - 1), (0.3 / 0.3 - 1), (0.6 / 0.4 - 1)]
    expected = torch.tensor([[s > 0 for s in score]] * 2, dtype=torch.float32) * mask
    torch.testing.assert_close(batch_preference_gate(dist, mask), expected)
    assert expected[0, 0] == 1 and expected[1, 1] == 0  # one gate per modality, over the batch
    # a sample with one available modality has distance 0 (its single path is the fused path): it adds nothing
    lone = torch.cat([dist, torch.tensor([[0.0, 0.0, 0.0, 0.0]])])
    lone_mask = torch.cat([mask, torch.tensor([[False, True, False, False]])])
    torch.testing.assert_close(batch_preference_gate(lone, lone_mask)[:2], expected)


def test_pooled_distance_statistic_schedule_and_initial_ones():
    reg = PreferenceRegulariser(4, missing_rates=[0.6, 0.4, 0.2, 0.8], gamma=0.01, gamma_growth=1.5, growth_every=2,
                                initial="ones", schedule="passion", statistic="pooled_distance")
    assert reg.coefficients.tolist() == [1.0, 1.0, 1.0, 1.0]
    mask = torch.tensor([[True, True, False, True], [True, False, True, True]])
    d1, d2 = torch.tensor([[0.2, 0.4, 0.9, 0.6], [0.5, 0.7, 0.3, 0.1]]), torch.tensor([[0.1, 0.2, 0.0, 0.3],
                                                                                        [0.4, 0.0, 0.5, 0.2]])
    coef = np.ones(4)
    for epoch in range(5):
        reg.observe(torch.zeros(2, 4), mask, distance=d1)
        reg.observe(torch.zeros(2, 4), mask, distance=d2)
        reg.on_epoch_end()
        m = mask.numpy().astype(float)
        pooled = ((d1.numpy() + d2.numpy()) * m).sum(0) / (2 * m.sum(0))
        rp = 1 - pooled / pooled.mean()
        eta = 0.01 * 1.5 ** (epoch // 2 + 1)  # PASSION grows eta before the update: 0.015, 0.015, 0.0225, ...
        coef = np.clip(coef - eta * rp, 0.1, 4.0)
        coef = 2 * coef / np.linalg.norm(coef)
        np.testing.assert_allclose(reg.coefficients.numpy(), coef, rtol=1e-6)
    seeds = PreferenceRegulariser(4, missing_rates=[0.6, 0.4, 0.2, 0.8])
    start = np.clip(1 / (1 - np.array([0.6, 0.4, 0.2, 0.8])), 0.1, 4.0)  # Proj(1 / (1 - FR)): 5 is clamped to 4
    np.testing.assert_allclose(seeds.coefficients.numpy(), 2 * start / np.linalg.norm(start), rtol=1e-6)
    assert seeds.gamma == 0.01 and PreferenceRegulariser(4, schedule="passion").gamma == pytest.approx(0.015)


def test_total_weighting_as_passion():
    g = torch.Generator().manual_seed(20)
    b, s = 2, 4

    def r(*shape):
        return torch.randn(*shape, generator=g)

    @dataclass
    class Out(SegOutput):
        sep: torch.Tensor | None = None

    out = Out(logits=r(b, K, s, s, s), deep=[r(b, K, 2, 2, 2)], uni=r(b, 4, K, s, s, s), uni_deep=[r(b, 4, K, 2, 2, 2)],
              features=r(b, 5, s, s, s), uni_features=r(b, 4, 5, s, s, s), sep=r(b, 4, K, s, s, s))
    label = torch.randint(0, K, (b, s, s, s), generator=g)
    mask = torch.tensor([[True, False, True, True], [True, True, False, True]])
    batch = Batch(torch.zeros(b, 4, s, s, s), label, mask, mask.clone())
    rates = {"flair": 0.6, "t1ce": 0.4, "t1": 0.2, "t2": 0.8}
    term = create_loss("prism", MODS, K, weighting="passion", uni_weight=0.0, separate=True, modal_weight=True,
                       missing_rates=rates, preference=True, gate="batch",
                       preference_options={"initial": "ones", "schedule": "passion", "statistic": "pooled_distance"},
                       **SEG_PASSION)
    imb = [0.5, 1.2, 0.8, 1.5]
    state = term.state_dict()
    state["preference"]["coefficients"] = imb
    term.load_state_dict(state)
    got = term(out, batch).total
    # the written definition: fuse + sum_m rp*imb*mw*sep + prm + 0.5 sum_m imb*mw*kl + 0.1 sum_m rp*mw*proto
    mw = [1 / (1 - rates[m]) for m in MODS]
    fuse = create_loss("fuse", MODS, K, **SEG_PASSION)(out, batch).total
    prm = create_loss("prm", MODS, K, **SEG_PASSION)(out, batch).total
    kl = create_loss("pixel_kl", MODS, K, batch_reduction="sum")(out, batch).parts
    gap, dist = (proto_gap(out.uni_features, out.features, label, num_classes=K, with_absolute=True))
    gap, dist = gap * mask, dist * mask
    rp = batch_preference_gate(dist, mask)  # [B, M]
    sep_bm = torch.stack([torch.stack([
        create_loss("fuse", MODS, K, **SEG_PASSION)(SegOutput(logits=out.sep[i:i + 1, j]),
                                                    Batch(batch.image[i:i + 1], label[i:i + 1], mask[i:i + 1],
                                                          mask[i:i + 1])).total for j in range(4)])
        for i in range(b)]) * mask
    expected = fuse + prm
    for j, m in enumerate(MODS):
        expected = expected + (rp[:, j] * sep_bm[:, j]).sum() * imb[j] * mw[j] + 0.5 * imb[j] * mw[j] * kl[
            f"pixel_kl/{m}"] + 0.1 * mw[j] * (rp[:, j] * gap[:, j]).sum()  # PASSION sums over the batch
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert rp.any() and not rp[mask].all()  # the gate is exercised both ways


#: Each documented difference of PASSION's objective -> the preset's option and value that selects it.
PASSION_OPTIONS = {
    "segmentation class weights": ("class_weighting", "passion"),
    "segmentation probability clamp": ("prob_floor", 0.005),
    "Dice smoothing": (("smooth_nr", "smooth_dr"), (0.0, 1e-7)),
    "batch sum": ("batch_reduction", "sum"),
    "separate decoder inside the total": ("separate", True),
    "no loss on the fused decoder's single-modality paths": ("uni_weight", 0.0),
    "PRM upsampled probabilities": ("label_resample", "upsample"),
    "PRM level weights": (("deep_weights", "prm_region0"), ([0.25, 0.125, 0.0625], 0.5)),
    "trilinear upsampling with align_corners=True": ("align_corners", True),
    "modal weights from the split's availability": ("missing_rates", "from_split"),
    "pixel-KL teacher direction, class mean (T^2: the default)": ("pixel_kl_variant", "passion"),
    "pixel-KL clamps and clamped weight, region maps at 1/2, upsampled deep levels at 1/4, 1/8, 1/16": (
        "pixel_kl_options", {"prob_floor": 0.005, "clamped_weight": True, "region0_weight": 0.5,
                             "deep_resample": "upsample", "deep_weights": [0.25, 0.125, 0.0625]}),
    "prototype classes in every sample": ("proto_variant", "passion"),
    "prototype eps": ("proto_eps", 1e-5),
    "preference gate per modality over the batch": ("gate", "batch"),
    "epoch statistic, schedule, initial imb_beta": (
        "preference_options", {"initial": "ones", "schedule": "passion", "statistic": "pooled_distance"}),
    "total's weighting": (("weighting", "modal_weight", "preference"), ("passion", True, True)),
}


def test_passion_preset_selects_every_difference_and_builds():
    from prism.config import build_config
    from prism.presets import load_preset

    config = build_config(load_preset("passion_brats2020_mr2468"))
    assert config.model.name == "rfnet" and config.model.options == {"width": 8}
    assert config.masking.train.name == "utd"
    (choice,) = config.losses
    options = choice.options
    assert choice.name == "prism"
    for what, (keys, values) in PASSION_OPTIONS.items():
        keys, values = (keys, values) if isinstance(keys, tuple) else ((keys,), (values,))
        for key, value in zip(keys, values, strict=True):
            assert options.get(key) == value, f"{what}: {key}"
    assert "scale_by_temperature" not in options["pixel_kl_options"]  # mu^2 is the default
    term = create_loss("prism", MODS, 4, **preset_options())
    assert term.needs >= {"sep", "region0", "uni_region0"} and term.weighting == "passion"
    assert term.preference.statistic == "pooled_distance"
    assert term.seg.batch_reduction == "sum" and term.pixel_kl.kl["align_corners"]
