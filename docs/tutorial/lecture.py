# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The lecture, runnable: object localization and detection from IoU to YOLO
#
# Each step of the history of localization and detection, in the lecture's order, trained and
# measured here on detlab's own synthetic data with one engine and one evaluator:
#
# 1. IoU and boxes
# 2. Classification + localization
# 3. DeepPose: keypoints by regression
# 4. Sliding windows and OverFeat
# 5. Region proposals: Selective Search
# 6. R-CNN, Fast R-CNN, Faster R-CNN
# 7. YOLO
# 8. Evaluation: precision, recall, AP and mAP
#
# Everything trains from scratch, offline, on a CPU: the whole notebook runs in about 14 minutes
# on 2 cores (`docs/tutorial/run.md` has the measured run). Each training cell says its budget.
# With the environment variable `DETLAB_TUTORIAL_QUICK=1` every training is two steps on a few
# images (what the test suite runs); the numbers are then meaningless, the code the same.
#
# `make tutorial` runs it from top to bottom and saves it, outputs included, as
# `docs/tutorial/lecture.ipynb`; `lecture.py` beside it is the same notebook as a script (jupytext's
# percent format), the one to edit.

# %%
import contextlib
import io
import json
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display

import detlab
from detlab import boxes as box_ops
from detlab.data.loading import load_dataset
from detlab.eval import COCOEvaluator, VOCEvaluator, proposal_recall, voc_average_precision
from detlab.models import MODELS
from detlab.models.contract import BoxesView
from detlab.proposals import GaussianBoxes, build_method, grouping_levels

QUICK = os.environ.get("DETLAB_TUTORIAL_QUICK", "0") == "1"
WORK = Path(os.environ.get("DETLAB_TUTORIAL_WORK", "runs/tutorial"))  # data, runs and caches go here
os.environ.setdefault("DETLAB_CACHE_DIR", str(WORK / "cache"))  # the proposal caches too: a run from scratch
plt.rcParams["figure.dpi"] = 80
torch.manual_seed(0)
STARTED = time.perf_counter()
NUMBERS: dict = {"quick": QUICK}  # every number this notebook reports, saved at the end


def budget(seconds: float) -> dict:
    """A training cell's budget: ``seconds`` of training (two steps in QUICK mode)."""
    return {"max_steps": 2} if QUICK else {"time_budget": seconds}


def images(count: int) -> int:
    """A synthetic set's size (30 images in QUICK mode)."""
    return 30 if QUICK else count


def train(method: str, **options):
    """``detlab.train``, its progress bars and warnings kept out of the notebook (the run folder keeps
    every logged number in metrics.jsonl); one line says what was trained."""
    with contextlib.redirect_stderr(io.StringIO()):
        result = detlab.train(method, **options)
    steps, seconds = result.state.step, result.state.elapsed_s
    print(f"{method}: {result.status}, {steps} steps in {seconds:.0f} s (its last stage), {result.run_dir}")
    return result


def table(rows: list[dict]) -> Markdown:
    """Rows of ``{column: value}`` (the first row's keys are the columns) as a Markdown table;
    floats to three decimals."""
    header = list(rows[0])
    cells = [
        [f"{value:.3f}" if isinstance(value, float) else str(value) for value in row.values()] for row in rows
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return Markdown("\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]))


print(f"detlab {detlab.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads")

# %% [markdown]
# ## 1. IoU and boxes
#
# A box is `(x1, y1, x2, y2)` in pixels. Two boxes are compared by their intersection over union,
# IoU = area(A ∩ B) / area(A ∪ B): 1 for the same box, 0 for boxes apart. PASCAL VOC and ImageNet
# count a localization as correct when its IoU with the true box is at least 0.5. That is looser
# than it sounds: a square shifted by a third of its side already drops to 0.5, and so does one
# grown by about 20% a side around the same centre (twice the area). Two people drawing the same
# object rarely agree much better, so 0.5 asks for "the right object, roughly in the right place".

# %%
truth = torch.tensor([[60.0, 60.0, 180.0, 180.0]])
shifted = {f"shifted by {shift} px": truth + torch.tensor([shift, 0.0, shift, 0.0]) for shift in (20, 40, 60)}
grown = truth + torch.tensor([[-25.0, -25.0, 25.0, 25.0]])
candidates = {**shifted, "grown by 25 px a side": grown}
ious = {name: float(box_ops.iou(truth, box)[0, 0]) for name, box in candidates.items()}
canvas = torch.full((3, 240, 300), 0.95)
views = [
    BoxesView(f"{name}: IoU {ious[name]:.2f}", torch.cat([truth, box]), ["truth", "guess"])
    for name, box in candidates.items()
]
detlab.plot_views(canvas, views, columns=4, panel_size=2.6)
plt.show()
NUMBERS["iou"] = ious
display(table([{"guess": name, "IoU": iou, "correct at 0.5?": iou >= 0.5} for name, iou in ious.items()]))

# %% [markdown]
# ## 2. Classification + localization
#
# One image, one object: a CNN with a class head and a box head that regresses the box's corners
# (normalised to the image). *Class-agnostic* regression predicts one box, *class-specific* one
# box per class (the box of the predicted class is used). Trained here on the one-object
# synthetic set (shapes on cluttered backgrounds) for **60 s each** (`benchmarks/bench_localization.py
# --part grid` uses the same 60 s on a 6,000-image set; this one has 2,000, generated in about half
# a minute). ImageNet's metric: a guess is right when its class is right *and* its box has IoU
# ≥ 0.5; the top-1 localization error is the share of images whose first guess is wrong.

# %%
LOCALIZER_S = 60  # training seconds a run
single = {
    "data": "synthetic-single",
    "data_root": str(WORK / "data" / "single"),
    "set": [f"data.synthetic_images={images(2000)}"],
}
localizers, rows = {}, []
for regression in ("agnostic", "specific"):
    run = WORK / f"localizer-{regression}"
    result = train("localizer", regression=regression, out=str(run), **single, **budget(LOCALIZER_S))
    localizers[regression] = detlab.load(result.run_dir)
    metrics = result.metrics
    rows.append({
        "box regression": regression, "steps": result.state.step, "class accuracy": metrics["classification_top1"],
        "mean IoU": metrics["mean_iou"], "top-1 localization": metrics["localization_top1"],
        "top-1 localization error": metrics["localization_error_top1"], "top-5 localization": metrics["localization_top5"],
    })  # fmt: skip
NUMBERS["localizer"] = rows
display(table(rows))

# %% [markdown]
# The box head's guesses on test images: the network sees the image warped to its 64 x 64 window
# (first row, with its five guesses); below, the first guess against the truth.

# %%
test_single = load_dataset(
    "synthetic-single", "test", root=WORK / "data" / "single", num_synthetic=images(2000)
)
pictures, views = [], []
for index in range(4):
    image, target = test_single[index]
    found, inside = localizers["agnostic"].look_inside(image)
    pictures += [image, image]
    views.append(inside.views[0])  # the warped window, with the five guesses
    iou = float(box_ops.iou(found["boxes"][:1], target["boxes"]).max())
    both = torch.cat([target["boxes"], found["boxes"][:1]])
    views.append(BoxesView(f"first guess: IoU {iou:.2f}", both, ["truth", f"guess: {found['names'][0]}"]))
detlab.plot_views(pictures, views[0::2] + views[1::2], columns=4, panel_size=2.4)
plt.show()

# %% [markdown]
# ## 3. DeepPose: keypoints by regression
#
# Toshev and Szegedy regress the joints' coordinates directly, then refine each joint by a
# second network on a crop around it (a cascade). Here on synthetic stick figures with 7 joints:
# **100 s** of training, half for stage 1 (whole image), half for one refinement stage (the
# settings of `bench_localization.py --part keypoints --keypoint-images 2000 --keypoint-budget 100`).
# PCK@0.2: a joint is right within 0.2 of the pose's size.

# %%
KEYPOINTS_S = 100  # training seconds, both stages together
pose = train(
    "keypoints",
    stages=1,
    data_root=str(WORK / "data" / "pose"),
    set=[f"data.synthetic_images={images(2000)}"],
    out=str(WORK / "keypoints"),
    **budget(KEYPOINTS_S),
)
NUMBERS["keypoints"] = [
    {
        "after": after,
        **{name: pose.metrics[f"stage{stage}/{name}"] for name in ("pck@0.1", "pck@0.2", "mean_error_px")},
    }
    for stage, after in ((1, "stage 1"), (2, "one refinement"))
]
display(table(NUMBERS["keypoints"]))
test_pose = load_dataset("synthetic-pose", "test", root=WORK / "data" / "pose", num_synthetic=images(2000))
image, _ = test_pose[0]
found, inside = detlab.load(pose.run_dir).look_inside(image)
detlab.plot_views(image, inside.views, columns=3, panel_size=2.8)
plt.show()

# %% [markdown]
# ## 4. Sliding windows and OverFeat
#
# A classifier finds objects by being run on every window of the image, at several scales. Run
# naively, each window is cropped and classified on its own. OverFeat's observation: the fully
# connected layers are convolutions whose kernel covers the whole feature grid, so the *same
# network* rewritten as a fully convolutional one scores every window in one pass, sharing the
# convolutions of overlapping windows. The score maps are the same; the time is not.
#
# The OverFeat detector (a localizer with a background class, trained on windows cut from the
# multi-object synthetic images) for **45 s**: enough to see its maps, not to detect well (it needs
# about 600 s for mAP@0.5 0.40-0.45, `docs/overfeat.md`).

# %%
OVERFEAT_S = 45
shapes = {
    "data": "synthetic",
    "data_root": str(WORK / "data" / "shapes"),
    "set": [f"data.synthetic_images={images(200)}"],
}
overfeat = detlab.load(train("overfeat", out=str(WORK / "overfeat"), **shapes, **budget(OVERFEAT_S)).run_dir)
test_shapes = load_dataset("synthetic", "test", root=WORK / "data" / "shapes", num_synthetic=images(200))
image, target = test_shapes[0]


def timed(function, *arguments, repeats: int = 1 if QUICK else 3):
    """``(function(*arguments), the median seconds of repeats calls)``."""
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function(*arguments)
        seconds.append(time.perf_counter() - started)
    return result, float(np.median(seconds))


NUMBERS["sliding_window"] = []
for scale in (1.0, 2.0):
    crops, crop_s = timed(overfeat.window_scores, image, scale, False)  # the network on each crop
    dense, dense_s = timed(overfeat.window_scores, image, scale, True)  # one fully convolutional pass
    difference = float((crops - dense).abs().max())
    NUMBERS["sliding_window"].append({
        "scale": scale, "windows": f"{crops.shape[1]} x {crops.shape[2]}", "max |crops - conv|": difference,
        "crops s": crop_s, "one conv pass s": dense_s, "speed-up": f"{crop_s / dense_s:.1f}x",
    })  # fmt: skip
display(table(NUMBERS["sliding_window"]))
found, inside = overfeat.look_inside(image)
title = "the best object-class probability of every window, scale by scale"
detlab.plot_views(image, inside.views, columns=4, panel_size=2.4, title=title)
plt.show()

# %% [markdown]
# ## 5. Region proposals: Selective Search
#
# Instead of every window, a few thousand class-agnostic regions likely to hold an object.
# Selective Search over-segments the image (Felzenszwalb-Huttenlocher), then greedily merges the
# two most similar neighbouring regions (colour, texture, size, fill) until one is left; every
# region formed on the way is a proposal. Below, one hierarchy at four points of its grouping.

# %%
counts = [10**6, 48, 12, 3]  # 10**6: the initial segmentation, whatever its count
levels = grouping_levels(image, counts)
figure, axes = plt.subplots(1, 4, figsize=(11, 3))
for panel, level in zip(axes, levels):
    panel.imshow(level, cmap="tab20", interpolation="nearest")
    for region in range(int(level.max()) + 1):  # each region's box: a proposal
        ys, xs = np.nonzero(level == region)
        box = (xs.min(), ys.min()), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()
        panel.add_patch(plt.Rectangle(*box, fill=False, edgecolor="white", linewidth=0.6))
    panel.set_title(f"{int(level.max()) + 1} regions", fontsize=9)
    panel.axis("off")
plt.show()

# %% [markdown]
# Recall against the number of proposals on the test images, against the proposal literature's
# baselines: sliding windows, uniformly random boxes, boxes from a Gaussian fitted to the training
# boxes, and single superpixels (Hosang et al.).

# %%
PROPOSAL_IMAGES = 3 if QUICK else len(test_shapes)
train_shapes = load_dataset("synthetic", "train", root=WORK / "data" / "shapes", num_synthetic=images(200))
train_boxes = [record.boxes for record in train_shapes.records]
gaussian = GaussianBoxes.fit(train_boxes, [(256, 256)] * len(train_boxes), max_proposals=2000, seed=0)
methods = {
    "ss-fast": build_method("ss-fast"),
    "sliding": build_method("sliding"),
    "uniform": build_method("uniform"),
    "gaussian (fitted)": gaussian,
    "superpixels": build_method("superpixels"),
}
samples = [test_shapes[index] for index in range(PROPOSAL_IMAGES)]
recalls, NUMBERS["proposals"] = {}, []
for name, method in methods.items():
    started = time.perf_counter()
    proposals = [method.propose(image) for image, _ in samples]
    seconds = (time.perf_counter() - started) / len(samples)
    truth = [target["boxes"] for _, target in samples], [target["labels"] for _, target in samples]
    result = recalls[name] = proposal_recall(proposals, *truth, num_proposals=(10, 100, 500, 1000, 2000))
    NUMBERS["proposals"].append({
        "method": name, "recall@2000, IoU 0.5": result["recall"]["0.5@2000"], "recall@100, IoU 0.7": result["recall"]["0.7@100"],
        "recall@2000, IoU 0.7": result["recall"]["0.7@2000"], "MABO": result["mabo"], "s an image": seconds,
    })  # fmt: skip
display(table(NUMBERS["proposals"]))
figure, axes = plt.subplots(1, 2, figsize=(9, 3.2))
for panel, threshold in zip(axes, ("0.5", "0.7")):
    for name, result in recalls.items():
        curve = result["recall_vs_proposals"]
        panel.plot(curve["num_proposals"], curve["recall"][threshold], marker=".", label=name)
    panel.set(xscale="log", ylim=(0, 1), xlabel="proposals an image", ylabel=f"recall at IoU {threshold}")
    panel.grid(alpha=0.3)
axes[1].legend(fontsize=7)
plt.show()

# %% [markdown]
# ## 6. R-CNN → Fast R-CNN → Faster R-CNN
#
# * **R-CNN** warps every proposal (with some context) to the network's fixed input and runs the
#   CNN on each of the ~2,000 warped regions, then per-class SVMs and box regressors.
# * **Fast R-CNN** runs the CNN once on the whole image and *RoI-pools* each proposal's part of the
#   feature map into a fixed grid of bins, whatever its shape; one head classifies and regresses.
# * **Faster R-CNN** drops Selective Search: a Region Proposal Network scores *anchors*, boxes of a
#   few sizes and shapes at every cell of the feature map, and regresses proposals from them.
#
# `detlab.compare` trains each for the same **60 s** (R-CNN's feature caching, SVMs and box
# regressors come on top, as in the lecture's tables), times them image by image on the same test
# images, with and without the proposal step, and scores them with one evaluator; `yolo`, the
# modern one-stage detector of step 7, is trained beside them. The set is 200 images (140 to train);
# `docs/compare.md` has the same command on the 600-image set.

# %%
COMPARE_S = 60  # training seconds a method
compare_settings = [f"data.root={WORK / 'data' / 'shapes'}", f"data.synthetic_images={images(200)}"]
if QUICK:  # fewer proposals an image, so R-CNN's feature caching takes seconds
    compare_settings += ["rcnn:model.max_proposals=50", "fast_rcnn:model.max_proposals=50"]
methods = "rcnn,fast_rcnn,faster_rcnn,yolo"
with contextlib.redirect_stderr(io.StringIO()):  # progress bars; compare prints a line a stage
    report = detlab.compare(
        "synthetic", methods, 2 if QUICK else COMPARE_S, WORK / "compare", compare_settings
    )
failed = [f"{row['method']}: {row.get('error')}" for row in report["rows"] if row["status"] != "done"]
assert not failed, failed
NUMBERS["compare"] = []
for row in report["rows"]:
    lecture = MODELS[row["method"]].lecture
    NUMBERS["compare"].append({
        "method": row["method"], "training s": round(row["training_s"]), "steps": row["steps"],
        "test s/image without proposals": row["s_per_image_without_proposals"] if row["external_proposals"] else "-",
        "with proposals": row["s_per_image_with_proposals"], "speed-up vs R-CNN": f"{row['speedup_with_proposals']:.1f}x",
        "mAP@0.5 (VOC07)": row["mAP50_voc07"], "mAP@[.5:.95]": row["AP_coco"],
        "the lecture: s/image, mAP (VOC 2007, a GPU)": f"{lecture.seconds_per_image:g} s, {lecture.mean_ap:g}" if lecture else "-",
    })  # fmt: skip
display(table(NUMBERS["compare"]))

# %% [markdown]
# The lecture's ratios (50 s → 2 s → 0.2 s: 25x and 250x) come from removing work: the CNN pass a
# proposal (Fast R-CNN), then the proposal method (Faster R-CNN). Below: what R-CNN's CNN sees of
# one proposal (the region warped to its window) beside what Fast R-CNN's head sees of one (the
# shared feature map pooled over it into 7 x 7 bins); then Faster R-CNN's anchors at one location,
# the anchors that learn each object of this image (IoU ≥ 0.7, or an object's best), and the RPN's
# proposals.

# %%
image, target = test_shapes[0]
_, rcnn_inside = detlab.load(WORK / "compare" / "rcnn").look_inside(image)
_, fast_inside = detlab.load(WORK / "compare" / "fast_rcnn").look_inside(image)
faster = detlab.load(WORK / "compare" / "faster_rcnn")
_, faster_inside = faster.look_inside(image)
detlab.plot_views(image, [rcnn_inside.views[1], fast_inside.views[1]], columns=2, panel_size=3.2)
plt.show()
proposals_view, anchors_view = faster_inside.views
_, positive = faster.assignment(image, target)
detlab.plot_views(image, [anchors_view, positive, proposals_view], columns=3, panel_size=3.2)
plt.show()

# %% [markdown]
# ## 7. YOLO: detection as one regression over a grid
#
# YOLO v1 warps the image to 448 x 448, lays a 7 x 7 grid over it and makes each cell responsible
# for the object whose centre falls in it: per cell two boxes, their confidences and one class
# distribution. One cell, one object: when several centres share a cell, only the largest is
# learnt. The grid assignment needs no training, only the model's grid (one training step makes a
# checkpoint). Below, the test image where the grid loses the most objects, and the share it loses
# over the whole test split.

# %%
yolov1 = detlab.load(train("yolov1", max_steps=1, out=str(WORK / "yolov1"), **shapes).run_dir)
assignments = [yolov1.assignment(*test_shapes[index]) for index in range(len(test_shapes))]
lost = [len(views[2].boxes) for views in assignments]
total = sum(len(test_shapes[index][1]["boxes"]) for index in range(len(test_shapes)))
crowded = int(np.argmax(lost))
NUMBERS["yolov1_grid"] = {"objects": total, "lost": sum(lost), "share_lost": sum(lost) / max(total, 1)}
print(f"the 7 x 7 grid loses {sum(lost)} of the {total} test objects ({sum(lost) / max(total, 1):.1%})")
detlab.plot_views(test_shapes[crowded][0], assignments[crowded], columns=3, panel_size=3.2)
plt.show()

# %% [markdown]
# The modern anchor-free model (`yolo`, trained in step 6) has no such limit: every cell of three
# feature maps (strides 8, 16 and 32) predicts its distances to a box's sides, and training hands
# each object the cells *inside* it whose current predictions align best with it (class score^0.5
# × IoU^6, the 10 best: task-aligned assignment). Below, its assignment on the same crowded image,
# then what it finds there.

# %%
yolo = detlab.load(WORK / "compare" / "yolo")
image, target = test_shapes[crowded]
found, inside = yolo.look_inside(image)
views = yolo.assignment(image, target)
kept = found["scores"] >= 0.3
names = [name for name, keep in zip(found["names"], kept.tolist()) if keep]
views.append(
    BoxesView(
        f"its {len(names)} detections scoring 0.3 or more", found["boxes"][kept], names, found["scores"][kept]
    )
)
detlab.plot_views(image, views, columns=3, panel_size=3.2)
plt.show()

# %% [markdown]
# ## 8. Evaluation: from detections to AP and mAP
#
# Every detector above is scored the same way. For one class, rank all its detections over the
# test set by score; walking down the list, each is a true positive if it overlaps a not yet
# matched object of that class with IoU ≥ 0.5, else a false positive. After each one,
# precision = TP / detections so far and recall = TP / objects. AP summarises the curve:
# PASCAL VOC 2007 averages the best precision at recall ≥ 0, 0.1, …, 1 (11 points); VOC 2010+
# takes the area under the curve made monotone (all points); COCO averages it at 101 recall
# points, and COCO's mAP@[.5:.95] averages that over IoU thresholds 0.5, 0.55, …, 0.95 and the
# classes. Here with Faster R-CNN from step 6.

# %%
classes = test_shapes.classes
voc07, voc, coco = (
    VOCEvaluator(classes, 0.5, use_11_point=True),
    VOCEvaluator(classes, 0.5),
    COCOEvaluator(classes),
)
for index in range(len(test_shapes)):
    image, target = test_shapes[index]
    detections = faster.predict(image)
    for evaluator in (voc07, voc, coco):
        evaluator.update([detections], [target])
voc07_result, voc_result, coco_result = voc07.compute(), voc.compute(), coco.compute()
row = max(voc_result.per_class(), key=lambda row: row["num_gt"])  # the class with the most objects
name, class_index = row["class"], classes.index(row["class"])
recall, precision = (np.asarray(values) for values in voc_result.curves[name])
problem = voc_result.problem  # what was scored: every detection's class and score
scores = np.sort(problem.det_scores[problem.det_category == class_index])[::-1]
hits = np.diff(np.concatenate([[0.0], recall])) > 0  # recall rises at each true positive
steps = [
    {"rank": rank + 1, "score": float(scores[rank]), "true positive?": bool(hits[rank]),
     "precision": float(precision[rank]), "recall": float(recall[rank])}
    for rank in range(min(12, len(scores)))
]  # fmt: skip
display(
    Markdown(f"The first of the {len(scores)} detections of **{name}** ({row['num_gt']} objects):"),
    table(steps),
)

# %%
envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
points = {"VOC07 11-point": np.linspace(0, 1, 11), "COCO 101-point": np.linspace(0, 1, 101)}
interpolated = {key: [precision[recall >= r].max(initial=0.0) for r in grid] for key, grid in points.items()}
ap = {
    "VOC07 11-point": voc_average_precision(recall, precision, use_11_point=True),
    "VOC all-point": voc_average_precision(recall, precision),
    "COCO 101-point": float(np.mean(interpolated["COCO 101-point"])),
}
coco_ap50 = {row["class"]: row["AP50"] for row in coco_result.per_class()}[name]
figure, axes = plt.subplots(figsize=(5, 3.6))
axes.plot(recall, precision, color="lightgrey", label="precision after each detection")
axes.step(
    recall,
    envelope,
    where="post",
    color="black",
    label=f"made monotone: all-point AP {ap['VOC all-point']:.3f}",
)
eleven = points["VOC07 11-point"], interpolated["VOC07 11-point"]
axes.plot(*eleven, "o", color="tab:red", label=f"11 points: VOC07 AP {ap['VOC07 11-point']:.3f}")
axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title=f"{name}, IoU 0.5")
axes.legend(fontsize=7, loc="lower left")
plt.show()
summary = coco_result.summary()
NUMBERS["evaluation"] = {
    "class": name,
    **ap,
    "COCO AP50 of the class (the evaluator)": coco_ap50,
    "mAP50_voc07": voc07_result.mean_ap,
    "mAP50_voc": voc_result.mean_ap,
    "AP50_coco": summary["AP50"],
    "AP_coco": summary["AP"],
}
display(table([{"": key, "value": value} for key, value in NUMBERS["evaluation"].items() if key != "class"]))

# %% [markdown]
# The 101-point AP computed above by hand equals the COCO evaluator's AP50 for the class; the
# three APs differ by how they interpolate the same curve. mAP@[.5:.95] is lower than mAP@0.5:
# it also asks for tight boxes.

# %%
NUMBERS["seconds"] = round(time.perf_counter() - STARTED, 1)
(WORK / "numbers.json").write_text(json.dumps(NUMBERS, indent=1, default=float))
print(f"the whole notebook: {NUMBERS['seconds'] / 60:.1f} minutes; numbers in {WORK / 'numbers.json'}")
