"""Object (grounding) scores with faster-coco-eval, the C++ COCO evaluator: per label, precision and recall at
IoU 0.5 over every predicted box (no score cut), mean IoU of the matched pairs, and AP50.

COCO's matching is used as is: per image and label, predictions in descending score order each take the
unmatched truth box of highest IoU >= 0.5. Labels are compared by name; a predicted label that the truth never
uses is reported under ``unlabelled_predictions`` and scores nowhere.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import numpy as np

from services.evaluation.metrics import ratio

IOU = 0.5


def grounding_metrics(pairs: Iterable[tuple[Optional[list[dict[str, Any]]], list[dict[str, Any]]]]
                      ) -> dict[str, Any]:
    """``pairs``: per image (truth objects ``{"label", "box"}`` or None, predicted rows ``{"label", x1..y2,
    "score"}``)."""
    from faster_coco_eval import COCO, COCOeval_faster

    gt_images, gt_anns, dt_anns = [], [], []
    labels: dict[str, int] = {}
    unlabelled: dict[str, int] = {}
    image_id = 0
    for truth, pred in pairs:
        if truth is None:
            continue
        image_id += 1
        gt_images.append({"id": image_id})
        for t in truth:
            cat = labels.setdefault(t["label"], len(labels) + 1)
            x1, y1, x2, y2 = t["box"]
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": image_id, "category_id": cat, "iscrowd": 0,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
        for p in pred:
            dt_anns.append((image_id, p))
    for image, p in dt_anns:  # labels are known only once every truth box is read
        if p["label"] not in labels:
            unlabelled[p["label"]] = unlabelled.get(p["label"], 0) + 1
    scored = [(image, p) for image, p in dt_anns if p["label"] in labels]
    per: dict[str, dict[str, Any]] = {}
    if labels:
        gt = COCO()
        gt.dataset = {"images": gt_images, "annotations": gt_anns,
                      "categories": [{"id": i, "name": n} for n, i in labels.items()]}
        gt.createIndex()
        matched: dict[int, float] = {}
        dt_cats: dict[int, int] = {}
        ap = np.full(len(labels), np.nan)
        if scored:
            dt = gt.loadRes([{"image_id": image, "category_id": labels[p["label"]],
                              "bbox": [p["x1"], p["y1"], p["x2"] - p["x1"], p["y2"] - p["y1"]],
                              "score": 1.0 if p.get("score") is None else float(p["score"])} for image, p in scored])
            ev = COCOeval_faster(gt, dt, "bbox", extra_calc=True, print_function=lambda *_: None)
            ev.params.iouThrs = np.array([IOU])
            ev.params.maxDets = [1000]
            ev.params.areaRng, ev.params.areaRngLbl = [[0.0, 1e12]], ["all"]
            ev.evaluate()
            ev.accumulate()
            for key, iou in ev.eval["matched"].items():  # "<dt id>_<gt id>" -> IoU of the match
                if iou >= IOU:
                    matched[int(key.split("_", 1)[0])] = float(iou)
            dt_cats = {a["id"]: a["category_id"] for a in dt.anns.values()}
            prec = ev.eval["precision"][0, :, :, 0, -1]  # [recall thresholds, labels]
            ap = np.array([prec[:, k][prec[:, k] > -1].mean() if (prec[:, k] > -1).any() else np.nan
                           for k in range(prec.shape[1])])
        cat_order = list(ev.params.catIds) if scored else sorted(labels.values())
        for name, cat in sorted(labels.items()):
            n_truth = sum(1 for a in gt_anns if a["category_id"] == cat)
            n_pred = sum(1 for c in dt_cats.values() if c == cat)
            ious = [iou for d, iou in matched.items() if dt_cats[d] == cat]
            k = cat_order.index(cat)
            per[name] = {"truth": n_truth, "predicted": n_pred, "matched": len(ious),
                         "precision": ratio(len(ious), n_pred), "recall": ratio(len(ious), n_truth),
                         "mean_iou": round(float(np.mean(ious)), 6) if ious else None,
                         "ap50": None if np.isnan(ap[k]) else round(float(ap[k]), 6)}
    n_truth = sum(v["truth"] for v in per.values())
    n_pred = sum(v["predicted"] for v in per.values())
    n_match = sum(v["matched"] for v in per.values())
    all_ious = [v["mean_iou"] * v["matched"] for v in per.values() if v["mean_iou"] is not None]
    return {"images": image_id, "iou_threshold": IOU, "truth": n_truth, "predicted": n_pred, "matched": n_match,
            "precision": ratio(n_match, n_pred), "recall": ratio(n_match, n_truth),
            "mean_iou": ratio(sum(all_ious), n_match), "by_label": per, "unlabelled_predictions": unlabelled}
