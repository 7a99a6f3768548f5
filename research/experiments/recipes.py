"""Builders for the repro configs: one per source of numbers, so that each configs/repro/NAME.py says only
what differs (the dataset, the protocol, the reported number) and the fields have one spelling.

Every experiment config holds: `kind` (finetune: a fine-tuning config plus overrides; probe: a feature dump and
a linear probe), `source` (where the number was published), `reported` (the headline value, a fraction) and
`reported_text` (as published), `metric`, `weights` (a `research.weights.fetch` name), `data` (a dataset spec;
empty: the user must pass --data, and `data_note` says what), and `smoke` (the stand-in weights, any field
the tiny smoke run must change, and `split_tree`: whether the tiny data comes as train/ and test/ folders, for
protocols with given splits).
"""
from __future__ import annotations

import math

import ml_collections

R50_KERAS = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
VGG16_KERAS = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
R50_TORCH = "resnet50-0676ba61.pth"  # torchvision IMAGENET1K_V1


def experiment(kind: str, source: str, reported: float, reported_text: str, weights: str, data: str,
               dataset: str, smoke_weights: str, metric: str = "test_accuracy", data_note: str = "",
               **parts) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.kind = kind
    c.source = source
    c.reported = reported
    c.reported_text = reported_text
    c.metric = metric
    c.weights = weights
    c.data = data
    c.dataset = dataset
    c.data_note = data_note
    c.smoke = {"weights": smoke_weights, "overrides": {}, "split_tree": False, **parts.pop("smoke", {})}
    c.update(parts)
    return c


def probe(tap: str, pool: str, image_size: int, resize: str, method: str, split: str = "random",
          test_size: float = 0.25) -> dict:
    """split: "random" (a seeded stratified `test_size` of every record) or "given" (the data's own train and
    test splits, one feature file each)."""
    return dict(tap=tap, pool=pool, image_size=image_size, resize=resize, method=method, split=split,
                test_size=test_size, batch_size=32)


# --- Seed 002: VGG16 block5_pool flatten features + logistic regression, 75/25 split -----------------------------

SEED002_SOURCE = ("Seed 002 (Keras VGG16 block5_pool features flattened to 25,088 dims at 224 px, "
                  "LogisticRegression with GridSearchCV over C, 75/25 stratified split)")


def seed002(dataset: str, reported: float, reported_text: str, data: str = "", data_note: str = ""):
    return experiment("probe", SEED002_SOURCE, reported, reported_text, VGG16_KERAS, data, dataset,
                      "keras:vgg16_notop", data_note=data_note,
                      probe=probe("block5_pool", "flatten", 224, "direct", "logreg"))


# --- Seed 004: cats vs dogs on VGG16 (Chollet, Deep Learning with Python, 5.3) ------------------------------------

SEED004_SOURCE = ("Seed 004 (Chollet, Deep Learning with Python, sec. 5.3: cats vs dogs, 2,000 training and "
                  "1,000 validation images, Keras VGG16 without top, Flatten-Dense(256)-Dropout(0.5)-Dense)")
SEED004_DATA_NOTE = ("TFDS cats_vs_dogs has one split of 23,262 images (20% held out for validation here), ten "
                     "times the book's 2,000; pass --data cats_and_dogs_small/ (train/ validation/) for the "
                     "book's subset")


def seed004(reported: float, reported_text: str, **overrides):
    """Validation accuracy, as the book reports it; `overrides` are fields of configs/seed004_cats_dogs_vgg16.py."""
    return experiment("finetune", SEED004_SOURCE, reported, reported_text, VGG16_KERAS, "tfds:cats_vs_dogs",
                      "cats vs dogs", "keras:vgg16_notop", metric="validation_accuracy",
                      data_note=SEED004_DATA_NOTE,
                      finetune=dict(config="configs/seed004_cats_dogs_vgg16.py", overrides=overrides),
                      smoke=dict(overrides={"head": {"pool": "avg"}}))  # a flatten head needs 224 px


# --- Kornblith, Shlens & Le 2019 (Do Better ImageNet Models Transfer Better?), supervised R50 -------------------

KORNBLITH_SOURCE = ("Kornblith, Shlens & Le, CVPR 2019, supervised ResNet-50 (torchvision IMAGENET1K_V1 here), "
                    "as reprinted in SimCLR (Chen et al. 2020) Table 8 and BYOL (Grill et al. 2020) Table 3")
KORNBLITH_STEPS = 20_000
KORNBLITH_BATCH = 256


def kornblith_dataset(dataset: str):
    """The dataset's row of the kornblith2019 grid's table: TFDS name, the paper's splits and metric."""
    from research.experiments import kornblith2019

    return kornblith2019.DATASET_BY_KEY[dataset]


def kornblith_linear(dataset: str, reported: float):
    """L-BFGS logistic regression on pre_logits of 224 px centre crops: the strength chosen on the dataset's
    validation split (given, or 20% of each class carved from train), refit on train + validation, scored on
    test by the paper's metric for the dataset."""
    d = kornblith_dataset(dataset)
    given_validation = "validation" in d.splits
    return experiment("probe", KORNBLITH_SOURCE, reported, f"{reported:.1%}", R50_TORCH, f"tfds:{d.tfds}", dataset,
                      "efficientnet_lite0", metric=f"test_{d.metric}", paper_splits=dict(d.splits),
                      paper_sizes=list(d.paper), smoke=dict(split_tree=True, validation=given_validation),
                      probe=probe("pre_logits", "avg", 224, "shorter_center_crop", "lbfgs", split="given"))


def kornblith_finetune(dataset: str, reported: float):
    """All layers, SGD + Nesterov 0.9, cosine decay, batch 256, 20,000 steps, random-resized crops and flips.
    The paper grid-searches lr and weight decay per dataset on validation, then trains on train + validation;
    this runs one point of that grid as the final fit (train + validation: the paper's training-set sizes),
    scored by the paper's metric on test."""
    d = kornblith_dataset(dataset)
    steps_per_epoch = max(d.paper[0] // KORNBLITH_BATCH, 1)  # the paper's sizes count train + validation
    overrides = {"freeze": "all", "batch_size": KORNBLITH_BATCH, "image_size": 224, "learning_rate": 0.01,
                 "epochs": math.ceil(KORNBLITH_STEPS / steps_per_epoch), "resize": "shorter_center_crop",
                 "optimizer": dict(name="sgd", momentum=0.9, nesterov=True, weight_decay=1e-4),
                 "schedule": dict(name="cosine", warmup_epochs=0.0),
                 "split": dict(test=0.0, validation=0.0, train_on_validation=True),
                 "augment": dict(flip=True, rotation=0.0, shift=0.0, shear=0.0, zoom=0.0, crop_scale=(0.08, 1.0))}
    return experiment("finetune", KORNBLITH_SOURCE, reported, f"{reported:.1%}", R50_TORCH, f"tfds:{d.tfds}",
                      dataset, "efficientnet_lite0", metric=f"test_{d.metric}",
                      finetune=dict(config="configs/finetune_head.py", overrides=overrides),
                      smoke=dict(split_tree=True))
