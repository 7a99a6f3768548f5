"""Seed 002: Oxford Flowers-17 (17 classes x 80 images), Keras VGG16 block5_pool features flattened,
LogisticRegression with C by GridSearchCV, 75/25 split.

Reported: 0.92-0.93 accuracy. Flowers-17 has no TFDS build: --data points at its class folders.

    research reproduce seed002_vgg16_logreg_flowers17 --data flowers17/
"""
from research.experiments import recipes


def get_config():
    return recipes.seed002("flowers17", 0.925, "0.92-0.93",
                           data_note="the Flowers-17 class folders (17 x 80 images); it has no TFDS build")
