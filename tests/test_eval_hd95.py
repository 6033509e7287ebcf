"""HD95 in its two named conventions against implementations written here from the definitions.

``monai``: surface voxels (a face neighbour outside), every one counting once, linearly interpolated percentiles.
``brats2023`` (the BraTS 2023 challenge code, DeepMind's surface-distance): surface elements at voxel corners,
weighted by the area of the marching-cubes surface around each corner, the first distance at which the cumulative
area reaches 95%. The reference below computes those areas polygon by polygon from explicit vertex coordinates.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prism.evaluation.hausdorff import area_weighted_percentile, hd95
from prism.evaluation.options import BRATS2023_EMPTY_HD95, BRATS_EMPTY_HD95

# ---- the references ------------------------------------------------------------------------------------------


def ball(shape, centre, radius):
    grid = np.indices(shape).astype(float)
    return sum((grid[i] - centre[i]) ** 2 for i in range(3)) <= radius**2


def nearest(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Brute-force nearest distance from each point of src [n, 3] to dst [m, 3]."""
    out = np.empty(len(src))
    for start in range(0, len(src), 256):
        diff = src[start:start + 256, None, :] - dst[None, :, :]
        out[start:start + 256] = np.sqrt((diff**2).sum(-1)).min(1)
    return out


def monai_reference(pred: np.ndarray, ref: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> float:
    def surface(m):
        padded = np.pad(m, 1)
        inner = padded.copy()
        for axis in range(3):
            inner &= np.roll(padded, 1, axis) & np.roll(padded, -1, axis)
        return np.argwhere((padded & ~inner)[1:-1, 1:-1, 1:-1]) * np.asarray(spacing)

    sp, sg = surface(pred), surface(ref)
    return max(np.percentile(nearest(sp, sg), 95), np.percentile(nearest(sg, sp), 95))


CORNERS = [(i, j, k) for i in (0, 1) for j in (0, 1) for k in (0, 1)]


def _polygon_area(points: np.ndarray, apex: int = 0) -> float:
    """Area of the fan of triangles from ``points[apex]`` over the polygon ``points`` (in cyclic order)."""
    pts = np.roll(points, -apex, axis=0)
    return sum(np.linalg.norm(np.cross(pts[i] - pts[0], pts[i + 1] - pts[0])) / 2 for i in range(1, len(pts) - 1))


def _mid(a, b, spacing):
    return (np.asarray(a) + np.asarray(b)) / 2 * spacing


def _cyclic(points: np.ndarray) -> np.ndarray:
    """Order the vertices of a planar convex polygon around its centroid."""
    centre = points.mean(0)
    normal = np.cross(points[1] - points[0], points[2] - points[0])
    if np.linalg.norm(normal) < 1e-12:
        normal = np.cross(points[1] - points[0], points[3] - points[0])
    u = (points[0] - centre) / np.linalg.norm(points[0] - centre)
    v = np.cross(normal / np.linalg.norm(normal), u)
    angles = np.arctan2((points - centre) @ v, (points - centre) @ u)
    return points[np.argsort(angles)]


def component_area(group: list[tuple[int, int, int]], spacing) -> float:
    """Area of the marching-cubes surface around one edge-connected group of corners of a 2x2x2 cube: the polygon
    through the midpoints of the cube edges that leave the group (the configurations a digital ball has)."""
    sp = np.asarray(spacing)
    cut = [(c, tuple(c[a] if a != ax else 1 - c[a] for a in range(3))) for c in group for ax in range(3)]
    cut = [(a, b) for a, b in cut if b not in group]
    points = np.array([_mid(a, b, sp) for a, b in cut])
    if len(group) == 3:  # an L on a face: a non-planar pentagon, triangulated as the challenge's table does it
        corner = next(c for c in group if sum(sum(abs(x - y) for x, y in zip(c, o, strict=True)) == 1
                                             for o in group) == 2)
        ends = [c for c in group if c != corner]
        normal_axis = next(a for a in range(3) if all(c[a] == corner[a] for c in group))
        fourth = tuple(ends[0][a] + ends[1][a] - corner[a] for a in range(3))

        def vertical(c):
            return _mid(c, tuple(c[a] if a != normal_axis else 1 - c[a] for a in range(3)), sp)

        ring = np.array([vertical(ends[0]), _mid(ends[0], fourth, sp), _mid(ends[1], fourth, sp),
                         vertical(ends[1]), vertical(corner)])
        return _polygon_area(ring, apex=0)  # the fan from the midpoint above one end of the L
    if len(group) == 4 and len(points) == 6:  # a corner and its three neighbours: a planar regular hexagon
        assert abs(np.linalg.det(np.c_[points[1:4] - points[0]])) < 1e-9
    elif not ((len(group) == 1 and len(points) == 3) or (len(group) == 2 and len(points) == 4)
              or (len(group) == 4 and len(points) == 4)):
        raise AssertionError(f"configuration not handled by this reference: {group}")
    return _polygon_area(_cyclic(points))


def corner_area(inside: set[tuple[int, int, int]], spacing) -> float:
    """Surface area around one corner of the voxel grid, from which of its 8 voxels are inside."""
    if len(inside) in (0, 8):
        return 0.0
    minority = inside if len(inside) <= 4 else set(CORNERS) - inside  # the surface is the same from either side
    groups: list[list[tuple[int, int, int]]] = []
    for c in sorted(minority):
        touching = [g for g in groups if any(sum(abs(x - y) for x, y in zip(c, o, strict=True)) == 1 for o in g)]
        merged = [c] + [o for g in touching for o in g]
        groups = [g for g in groups if g not in touching] + [merged]
    return sum(component_area(g, spacing) for g in groups)


def surface_elements(mask: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    """Corner coordinates (mm) and areas (mm^2) of the surface elements of a mask."""
    padded = np.pad(mask, 1)
    points, areas = [], []
    for corner in np.ndindex(*(s - 1 for s in padded.shape)):
        block = padded[corner[0]:corner[0] + 2, corner[1]:corner[1] + 2, corner[2]:corner[2] + 2]
        if block.all() or not block.any():
            continue
        points.append(np.asarray(corner) * np.asarray(spacing))
        areas.append(corner_area({c for c in CORNERS if block[c]}, spacing))
    return np.array(points), np.array(areas)


def brats_reference(pred: np.ndarray, ref: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> float:
    (pp, pa), (gp, ga) = surface_elements(pred, spacing), surface_elements(ref, spacing)

    def robust(d, a):
        order = np.argsort(d)
        d, cumulative = d[order], np.cumsum(a[order]) / a.sum()
        return d[min(int(np.argmax(cumulative >= 0.95)), len(d) - 1)]

    return max(robust(nearest(pp, gp), pa), robust(nearest(gp, pp), ga))


def lib(pred, ref, spacing=(1.0, 1.0, 1.0), convention="monai") -> float:
    return float(hd95(torch.from_numpy(pred)[None, None], torch.from_numpy(ref)[None], spacing,
                      convention=convention)[0, 0])


# ---- known values --------------------------------------------------------------------------------------------

SHAPE = (40, 40, 40)


def test_a_far_satellite_is_invisible_to_monai_and_dominates_the_brats2023_hd95():
    big = ball(SHAPE, (10, 10, 10), 8)
    satellite = ball(SHAPE, (28, 28, 28), 2)
    assert satellite.sum() == 33 and not (big & satellite).any()
    reference, pred = big | satellite, big
    monai_value = monai_reference(pred, reference)
    brats_value = brats_reference(pred, reference)
    assert monai_value == 0.0  # the satellite's 32 surface voxels are under 5% of the reference's surface voxels
    assert brats_value > 15.0  # ... but it holds over 5% of the surface area: its distance is the percentile
    assert lib(pred, reference) == pytest.approx(monai_value, abs=1e-6)
    assert lib(pred, reference, convention="brats2023") == pytest.approx(brats_value, abs=1e-5)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.0, 1.5, 0.8)])
def test_concentric_balls_under_both_conventions(spacing):
    outer, inner = ball((18, 18, 18), (9, 9, 9), 6), ball((18, 18, 18), (9, 9, 9), 4)
    assert lib(inner, outer, spacing) == pytest.approx(monai_reference(inner, outer, spacing), abs=1e-5)
    expected = brats_reference(inner, outer, spacing)
    assert lib(inner, outer, spacing, "brats2023") == pytest.approx(expected, abs=1e-5)
    assert lib(outer, inner, spacing, "brats2023") == pytest.approx(expected, abs=1e-5)  # symmetric
    if spacing == (1.0, 1.0, 1.0):
        assert lib(inner, outer) != pytest.approx(expected, abs=0.05)  # the two conventions differ here


def test_surface_areas_of_the_reference_by_hand():
    # one voxel: a triangle of side sqrt(2)/2 at each of its 8 corners (an octahedron), sqrt(3) in all
    voxel = np.zeros((3, 3, 3), bool)
    voxel[1, 1, 1] = True
    points, areas = surface_elements(voxel, (1.0, 1.0, 1.0))
    assert len(points) == 8 and areas.sum() == pytest.approx(math.sqrt(3))
    # a 3x3x3 box: 6 faces of 2x2 unit squares, 12 edges of 2 bevels 1 x sqrt(2)/2, 8 corner triangles
    box = np.zeros((5, 5, 5), bool)
    box[1:4, 1:4, 1:4] = True
    _, areas = surface_elements(box, (1.0, 1.0, 1.0))
    assert areas.sum() == pytest.approx(6 * 4 + 12 * 2 * math.sqrt(2) / 2 + 8 * math.sqrt(3) / 8)
    # spacing scales each polygon: the box with 2 mm along the first axis (4 x 2 x 2 mm between voxel centres)
    _, areas = surface_elements(box, (2.0, 1.0, 1.0))
    along_first = 2 * 2.0 * math.hypot(0.5, 0.5)  # an edge along the first axis: 2 bevels, 2 mm long
    along_other = 2 * 1.0 * math.hypot(1.0, 0.5)  # along the others: 1 mm long, 1 mm and 0.5 mm legs
    corner = 0.5 * np.linalg.norm(np.cross([-1.0, 0.5, 0], [-1.0, 0, 0.5]))
    assert areas.sum() == pytest.approx(2 * 4 + 4 * 8 + 4 * along_first + 8 * along_other + 8 * corner)


def test_area_weighted_percentile_takes_the_first_distance_reaching_the_share():
    d = np.array([3.0, 1.0, 2.0, 10.0])
    a = np.array([1.0, 4.0, 4.0, 1.0])  # sorted: 1 (40%), 2 (80%), 3 (90%), 10 (100%)
    assert area_weighted_percentile(d, a, 80) == 2.0
    assert area_weighted_percentile(d, a, 85) == 3.0
    assert area_weighted_percentile(d, a, 95) == 10.0
    assert area_weighted_percentile(d, np.ones(4), 50) == 2.0  # equal areas: no interpolation, unlike np.percentile


def test_empty_sets_follow_each_convention():
    g = torch.zeros(1, 6, 6, 6, dtype=torch.bool)
    g[0, 1:4, 1:4, 1:4] = True
    empty = torch.zeros_like(g)
    pred = torch.stack([empty, g])  # [2 predictions, 1 region]
    assert hd95(pred, g)[:, 0].tolist() == [BRATS_EMPTY_HD95, 0.0]
    assert hd95(pred, g, convention="brats2023")[:, 0].tolist() == [BRATS2023_EMPTY_HD95, 0.0]
    assert BRATS2023_EMPTY_HD95 == 374.0 and BRATS_EMPTY_HD95 == pytest.approx(math.hypot(240, 240, 155))
    assert hd95(pred, empty, convention="brats2023")[:, 0].tolist() == [0.0, BRATS2023_EMPTY_HD95]
    assert hd95(pred, g, empty_value=5.0)[0, 0] == 5.0
    assert math.isnan(hd95(pred, g, empty_value=math.nan)[0, 0])


@pytest.mark.parametrize("spacing", [(0.0, 1.0, 1.0), (1.0, -1.0, 1.0), (1.0, math.nan, 1.0), (1.0, 1.0)])
def test_a_spacing_that_is_not_positive_is_refused(spacing):
    g = torch.ones(1, 3, 3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="spacing"):
        hd95(g[None], g, spacing)


def test_unknown_convention_is_refused():
    g = torch.ones(1, 3, 3, 3, dtype=torch.bool)
    with pytest.raises(Exception, match="monai, brats2023"):
        hd95(g[None], g, convention="panoptica")
