"""Known-value tables (MONAI TEST_CASES style) for pixel_kl, proto_l2 and gss.

Each case fixes the inputs (seeded), the options and the mask; the expected value comes from an independent float64
implementation written below from the papers' formulas (RFNet, Ding et al., ICCV 2021; PASSION, Shi et al., ACM MM
2024; the GSS and prototype terms as PASSION's code defines them), with explicit loops over samples, modalities,
classes and voxels (numpy), sharing no code with prism. """

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prism.plugins.losses import gss_loss, pixel_kl_loss, proto_l2_loss


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _random(seed: int, *shape: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


# ---- pixel_kl ----------------------------------------------------------------------------------------------------

def ref_pixel_kl(student: list[np.ndarray], teacher: list[np.ndarray], mask: np.ndarray, mu: float, variant: str
                 ) -> np.ndarray:
    """Per-modality L_pixel^m ``[M]`` (batch mean, missing = 0).

    seeds:   sum over levels l of mean over voxels of KL(softmax(z^{m,l}/mu) || softmax(z^l/mu)), summed over classes.
    passion: sum over levels of mu^2 * mean over classes and voxels of p_t (log p_t - log p_s).
    """
    b, m = mask.shape
    out = np.zeros(m)
    for bi in range(b):
        for mi in range(m):
            if not mask[bi, mi]:
                continue
            value = 0.0
            for s_lv, t_lv in zip(student, teacher, strict=True):
                k = t_lv.shape[1]
                voxels = list(np.ndindex(*t_lv.shape[2:]))
                acc = 0.0
                for v in voxels:
                    ps = _softmax(s_lv[(bi, mi, slice(None), *v)] / mu)
                    pt = _softmax(t_lv[(bi, slice(None), *v)] / mu)
                    if variant == "seeds":
                        acc += sum(ps[c] * (math.log(ps[c]) - math.log(pt[c])) for c in range(k))
                    else:
                        acc += mu**2 * sum(pt[c] * (math.log(pt[c]) - math.log(ps[c])) for c in range(k)) / k
                value += acc / len(voxels)
            out[mi] += value / b
    return out


#: (name, seed, batch, modalities, classes, level sizes, mask, temperature, variant, logit scale)
PIXEL_KL_CASES = [
    ("seeds-one-level", 0, 2, 3, 3, [(3, 2, 2)], [[1, 1, 1], [1, 0, 1]], 4.0, "seeds", 1.0),
    ("seeds-two-levels-T1", 1, 2, 2, 4, [(4, 4, 2), (2, 2, 1)], [[1, 0], [1, 1]], 1.0, "seeds", 2.0),
    ("passion-two-levels", 2, 1, 3, 3, [(2, 2, 2), (1, 1, 1)], [[0, 1, 1]], 4.0, "passion", 3.0),
    ("passion-large-logits-T2", 3, 2, 2, 2, [(3, 3, 1)], [[1, 1], [0, 1]], 2.0, "passion", 8.0),
]


@pytest.mark.parametrize(("name", "seed", "b", "m", "k", "sizes", "mask", "mu", "variant", "scale"), PIXEL_KL_CASES,
                         ids=[c[0] for c in PIXEL_KL_CASES])
def test_pixel_kl_known_values(name, seed, b, m, k, sizes, mask, mu, variant, scale):
    student = [_random(seed * 10 + i, b, m, k, *s, scale=scale) for i, s in enumerate(sizes)]
    teacher = [_random(seed * 10 + 5 + i, b, k, *s, scale=scale) for i, s in enumerate(sizes)]
    mask_t = torch.tensor(mask, dtype=torch.bool)
    options = {"direction": "student_teacher", "class_reduction": "sum", "scale_by_temperature": False} \
        if variant == "seeds" else \
        {"direction": "teacher_student", "class_reduction": "mean", "scale_by_temperature": True}
    got = pixel_kl_loss(student[0], teacher[0], mask_t, student_deep=student[1:] or None,
                        teacher_deep=teacher[1:] or None, temperature=mu, reduction="per_modality", **options)
    expected = ref_pixel_kl([s.numpy() for s in student], [t.numpy() for t in teacher], np.array(mask, bool), mu,
                            variant)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-7)
    assert expected[np.array(mask, bool).any(0)].min() > 0  # every available modality has a non-trivial value


# ---- proto_l2 ----------------------------------------------------------------------------------------------------

def ref_proto_gap(student: np.ndarray, teacher: np.ndarray, label: np.ndarray, k: int, variant: str) -> np.ndarray:
    """Prototype gap D ``[B, M]``.

    Per sample and path, c_k = mean of the path's level-0 features over the voxels of class k; S_k(v) = cos(f_v, c_k)
    (0 for a zero vector); D = sum (seeds: classes present in the sample) or mean (passion: classes present in
    every sample of the batch) over classes of mean over voxels (S^m_k(v) - S^t_k(v))^2.
    """
    b, m = student.shape[:2]
    flat_s = student.reshape(b, m, student.shape[2], -1)
    flat_t = teacher.reshape(b, teacher.shape[1], -1)
    flat_y = label.reshape(b, -1)
    in_every = [c for c in range(k) if all((flat_y[i] == c).any() for i in range(b))]

    def cos(x: np.ndarray, y: np.ndarray) -> float:
        nx, ny = np.linalg.norm(x), np.linalg.norm(y)
        return 0.0 if nx == 0 or ny == 0 else float(x @ y / (nx * ny))

    def sims(f: np.ndarray, y: np.ndarray, c: int) -> np.ndarray:  # f [C, S]
        proto = f[:, y == c].mean(1)
        return np.array([cos(f[:, v], proto) for v in range(f.shape[1])])

    gap = np.zeros((b, m))
    for bi in range(b):
        classes = in_every if variant == "passion" else [c for c in range(k) if (flat_y[bi] == c).any()]
        for mi in range(m):
            values = [np.mean((sims(flat_s[bi, mi], flat_y[bi], c) - sims(flat_t[bi], flat_y[bi], c)) ** 2)
                      for c in classes]
            if values:
                gap[bi, mi] = np.sum(values) if variant == "seeds" else np.mean(values)
    return gap


#: (name, seed, batch, modalities, channels, classes, spatial, label rule, mask, variant)
PROTO_CASES = [
    ("seeds-all-classes", 0, 2, 3, 4, 3, (3, 2, 2), "random", [[1, 1, 1], [1, 0, 1]], "seeds"),
    ("seeds-absent-class", 1, 2, 2, 3, 4, (2, 2, 2), "no-3-in-1", [[1, 1], [0, 1]], "seeds"),
    ("passion-common-classes", 2, 2, 3, 2, 4, (3, 3, 1), "no-3-in-1", [[1, 1, 0], [1, 1, 1]], "passion"),
    ("passion-one-sample", 3, 1, 2, 5, 3, (2, 2, 3), "random", [[1, 1]], "passion"),
]


def _labels(seed: int, b: int, k: int, spatial: tuple[int, ...], rule: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 100)
    label = torch.randint(0, k, (b, *spatial), generator=g)
    if rule == "no-3-in-1":
        label[1] = label[1].clamp(max=2)
    return label


@pytest.mark.parametrize(("name", "seed", "b", "m", "c", "k", "spatial", "rule", "mask", "variant"), PROTO_CASES,
                         ids=[c[0] for c in PROTO_CASES])
def test_proto_l2_known_values(name, seed, b, m, c, k, spatial, rule, mask, variant):
    student = _random(seed, b, m, c, *spatial)
    teacher = _random(seed + 50, b, c, *spatial)
    label = _labels(seed, b, k, spatial, rule)
    mask_t = torch.tensor(mask, dtype=torch.bool)
    options = {"class_reduction": "sum", "class_presence": "sample"} if variant == "seeds" else \
        {"class_reduction": "mean", "class_presence": "batch"}
    got = proto_l2_loss(student, teacher, label, mask_t, num_classes=k, reduction="none", **options)
    gap = ref_proto_gap(student.numpy(), teacher.numpy(), label.numpy(), k, variant)
    expected = gap * np.array(mask, float)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-7)
    total = proto_l2_loss(student, teacher, label, mask_t, num_classes=k, **options)
    np.testing.assert_allclose(float(total), expected.mean(0).sum(), rtol=1e-5)
    assert expected.max() > 0


# ---- gss -------------------------------------------------------------------------------------------------------

def ref_gss(uni: np.ndarray, mask: np.ndarray, anchor: int | None, high: float = 0.65, medium: float = 0.75,
            floor: float = 0.005) -> tuple[np.ndarray, dict[str, int]]:
    """Per-modality GSS ``[M]`` (batch mean, missing = 0): KL(p_m || teacher), summed over classes, mean over voxels.

    Teacher per sample, class and voxel: high = anchor (FLAIR) available with p > 0.65: take it; medium = not high
    and every available other modality > 0.75 (at least one): their mean; low = the rest: the minimum over the
    available modalities. Then clamp to >= 0.005 and renormalise over classes. Also returns how many (sample,
    voxel, class) entries fell in each region.
    """
    b, m, k = uni.shape[:3]
    voxels = list(np.ndindex(*uni.shape[3:]))
    out = np.zeros(m)
    regions = {"high": 0, "medium": 0, "low": 0}
    for bi in range(b):
        avail = [i for i in range(m) if mask[bi, i]]
        others = [i for i in avail if i != anchor]
        acc = np.zeros(m)
        for v in voxels:
            probs = {i: _softmax(uni[(bi, i, slice(None), *v)]) for i in range(m)}
            teacher = np.zeros(k)
            for c in range(k):
                if anchor is not None and anchor in avail and probs[anchor][c] > high:
                    teacher[c] = probs[anchor][c]
                    regions["high"] += 1
                elif others and all(probs[i][c] > medium for i in others):
                    teacher[c] = np.mean([probs[i][c] for i in others])
                    regions["medium"] += 1
                else:
                    teacher[c] = min(probs[i][c] for i in avail)
                    regions["low"] += 1
            teacher = np.maximum(teacher, floor)
            teacher = teacher / teacher.sum()
            for i in avail:
                acc[i] += sum(probs[i][c] * (math.log(probs[i][c]) - math.log(teacher[c])) for c in range(k))
        out += acc / len(voxels) / b
    return out, regions


#: (name, seed, batch, modalities, classes, spatial, mask, anchor, logit scale)
GSS_CASES = [
    ("all-available-flair-anchor", 0, 2, 4, 3, (3, 2, 2), [[1, 1, 1, 1], [1, 1, 1, 1]], 0, 3.0),
    ("missing-anchor", 1, 2, 4, 3, (2, 2, 2), [[0, 1, 1, 1], [1, 0, 1, 0]], 0, 4.0),
    ("no-anchor", 2, 2, 2, 2, (2, 3, 1), [[1, 1], [1, 0]], None, 4.0),
    ("confident-inputs", 3, 2, 3, 2, (3, 3, 1), [[1, 1, 0], [1, 1, 1]], 0, 8.0),
]


@pytest.mark.parametrize(("name", "seed", "b", "m", "k", "spatial", "mask", "anchor", "scale"), GSS_CASES,
                         ids=[c[0] for c in GSS_CASES])
def test_gss_known_values(name, seed, b, m, k, spatial, mask, anchor, scale):
    uni = _random(seed, b, m, k, *spatial, scale=scale)
    mask_np = np.array(mask, bool)
    got = gss_loss(uni, torch.tensor(mask, dtype=torch.bool), anchor=anchor, reduction="per_modality")
    expected, regions = ref_gss(uni.numpy(), mask_np, anchor)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5, atol=1e-7)
    assert regions["medium"] > 0 and regions["low"] > 0 and (regions["high"] > 0) == (anchor is not None)
    assert expected[mask_np.any(0)].min() > 0
