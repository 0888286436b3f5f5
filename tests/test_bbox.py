"""Tests of the bounding-box convention (x0, y0, x1, y1), exclusive ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from busmonai.clinical.bbox import bbox_iou, bbox_to_map, bboxes_to_maps, mask_bbox, validate_bbox
from busmonai.errors import BusmonaiInputError


def test_mask_bbox_convention():
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[4:9, 10:25] = 255  # rows 4..8, columns 10..24
    assert mask_bbox(mask) == (10, 4, 25, 9)
    x0, y0, x1, y1 = mask_bbox(mask)
    assert (x1 - x0, y1 - y0) == (15, 5)
    single = np.zeros((5, 5), dtype=bool)
    single[2, 3] = True
    assert mask_bbox(single) == (3, 2, 4, 3)
    assert all(isinstance(v, int) for v in mask_bbox(single))


def test_mask_bbox_threshold_and_errors():
    soft = np.zeros((10, 10))
    soft[2:5, 3:7] = 0.9
    soft[8, 8] = 0.2
    assert mask_bbox(soft, threshold=0.5) == (3, 2, 7, 5)
    assert mask_bbox(soft) == (3, 2, 9, 9)
    with pytest.raises(BusmonaiInputError, match="empty"):
        mask_bbox(np.zeros((8, 8)))
    with pytest.raises(BusmonaiInputError, match="2-D"):
        mask_bbox(np.ones((2, 8, 8)))


def test_bbox_to_map_roundtrip():
    box = (3, 5, 17, 9)
    m = bbox_to_map(box, 12, 20)
    assert m.dtype == np.float32 and m.shape == (12, 20)
    assert m.sum() == (17 - 3) * (9 - 5)
    assert mask_bbox(m) == box
    full = bbox_to_map((0, 0, 20, 12), 12, 20)
    assert full.all()


def test_bboxes_to_maps_matches_numpy():
    boxes = [(0, 0, 4, 4), (2, 3, 10, 7), (9, 0, 10, 8)]
    maps = bboxes_to_maps(torch.tensor(boxes), 8, 10)
    assert maps.shape == (3, 1, 8, 10) and maps.dtype == torch.float32
    for i, box in enumerate(boxes):
        np.testing.assert_array_equal(maps[i, 0].numpy(), bbox_to_map(box, 8, 10))
    float_maps = bboxes_to_maps(torch.tensor(boxes, dtype=torch.float64), 8, 10)
    torch.testing.assert_close(float_maps, maps)
    with pytest.raises(BusmonaiInputError, match=r"\(B, 4\)"):
        bboxes_to_maps(torch.zeros(3, 5), 8, 10)


def test_validate_bbox():
    assert validate_bbox((0, 0, 10, 8), 8, 10) == (0, 0, 10, 8)
    assert validate_bbox([1.0, 2.0, 3.0, 4.0], 8, 10) == (1, 2, 3, 4)
    with pytest.raises(BusmonaiInputError, match="zero or negative area"):
        validate_bbox((3, 2, 3, 6), 8, 10)
    with pytest.raises(BusmonaiInputError, match="zero or negative area"):
        validate_bbox((3, 6, 5, 2), 8, 10)
    with pytest.raises(BusmonaiInputError, match="outside"):
        validate_bbox((0, 0, 11, 8), 8, 10)
    with pytest.raises(BusmonaiInputError, match="outside"):
        validate_bbox((-1, 0, 5, 5), 8, 10)
    with pytest.raises(BusmonaiInputError, match="four integers"):
        validate_bbox((0, 0, 5), 8, 10)
    with pytest.raises(BusmonaiInputError, match="four integers"):
        validate_bbox((0, 0, 5.5, 5), 8, 10)
    with pytest.raises(BusmonaiInputError, match="four integers"):
        validate_bbox(("a", 0, 5, 5), 8, 10)
    with pytest.raises(BusmonaiInputError):
        bbox_to_map((0, 0, 0, 5), 8, 10)


def test_bbox_iou():
    assert bbox_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert bbox_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges, exclusive ends
    assert bbox_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert bbox_iou((0, 0, 4, 4), (1, 1, 3, 3)) == pytest.approx(4 / 16)
    assert bbox_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
