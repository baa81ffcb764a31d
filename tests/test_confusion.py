"""detector.confusion: the detection confusion matrix at IoU .5 on a case whose cells are known by
construction (rows true class + background, columns predicted class + background):

- a right detection, a detection of the wrong class, a detection of nothing, a missed box;
- detections below the score threshold are not counted, those at it are;
- greedy by score: the higher-scoring of two detections of one box takes it, even with the
  lower IoU, and the other is a false positive;
- a detection overlapping two boxes takes the one of higher IoU;
- a crowd box is not a box to find, and a detection inside it is not a false positive.
"""

from __future__ import annotations

from detector.confusion import confusion_matrix


def _gt(boxes):
    return {"images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100} for i in (1, 2, 3)],
            "annotations": [{"id": k + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3],
                             "iscrowd": int(crowd)} for k, (i, c, b, crowd) in enumerate(boxes)],
            "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}]}  # ids not in name order


def _det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


CAT, DOG = 7, 3


def test_cells_by_construction():
    gt = _gt([(1, CAT, [0, 0, 10, 10], False), (1, DOG, [50, 50, 10, 10], False), (2, CAT, [0, 0, 10, 10], False),
              (3, DOG, [0, 0, 10, 10], False), (3, CAT, [20, 0, 10, 10], False), (3, DOG, [60, 60, 30, 30], True)])
    dets = [
        _det(1, CAT, [0, 0, 10, 10], 0.9),      # cat found: [cat, cat]
        _det(1, CAT, [50, 50, 10, 10], 0.3),    # dog called cat, at the threshold: [dog, cat]
        _det(1, DOG, [80, 80, 10, 10], 0.7),    # nothing there: [background, dog]
        _det(1, DOG, [0, 0, 10, 10], 0.29),     # below the threshold: not counted
        # image 2: the cat is missed: [cat, background]
        # image 3: two detections of the dog box: the .8 one (IoU .6) takes it, the .6 one (IoU 1) is a FP
        _det(3, CAT, [0, 0, 10, 6], 0.8),       # [dog, cat]
        _det(3, DOG, [0, 0, 10, 10], 0.6),      # [background, dog]
        _det(3, DOG, [18, 0, 10, 10], 0.5),     # the cat box (IoU .67) called dog: [cat, dog]
        _det(3, CAT, [62, 62, 20, 20], 0.95),   # inside the crowd region: not counted
    ]
    out = confusion_matrix(gt, dets)
    assert out["category_ids"] == [DOG, CAT] and out["labels"] == ["dog", "cat", "background"]
    # rows true (dog, cat, background), columns predicted (dog, cat, background)
    assert out["matrix"] == [[0, 2, 0],
                             [1, 1, 1],
                             [2, 0, 0]]
    assert out["score_threshold"] == 0.3 and out["iou_threshold"] == 0.5 and out["num_images"] == 3


def test_a_detection_takes_the_box_of_highest_iou_whatever_its_class():
    gt = _gt([(1, CAT, [0, 0, 10, 10], False), (1, DOG, [4, 0, 10, 10], False)])
    # a cat detection: IoU .54 with the cat box, .82 with the dog box
    out = confusion_matrix(gt, [_det(1, CAT, [3, 0, 10, 10], 0.9)])
    assert out["matrix"] == [[0, 1, 0], [0, 0, 1], [0, 0, 0]]  # [dog, cat] and the cat box missed


def test_threshold_and_image_subset():
    gt = _gt([(1, CAT, [0, 0, 10, 10], False), (2, CAT, [0, 0, 10, 10], False)])
    dets = [_det(1, CAT, [0, 0, 10, 10], 0.5), _det(2, CAT, [0, 0, 10, 10], 0.5)]
    assert confusion_matrix(gt, dets, score_threshold=0.6)["matrix"] == [[0, 0, 0], [0, 0, 2], [0, 0, 0]]
    assert confusion_matrix(gt, dets, image_ids=[2])["matrix"] == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
