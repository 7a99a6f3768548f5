"""Seed 002: Caltech-101, Keras VGG16 block5_pool features flattened, LogisticRegression with C by
GridSearchCV, 75/25 stratified split of every image.

Reported: 0.96 accuracy. TFDS caltech101's train and test splits are pooled and re-split 75/25.

    research reproduce seed002_vgg16_logreg_caltech101          # or --data 101_ObjectCategories/
"""
from research.experiments import recipes


def get_config():
    return recipes.seed002("caltech101", 0.96, "0.96", data="tfds:caltech101",
                           data_note="every image of TFDS caltech101, re-split 75/25")
