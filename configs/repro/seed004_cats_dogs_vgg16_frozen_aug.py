"""Seed 004, second recipe: the frozen VGG16 base with the dense head trained end to end on augmented images
(flips, rotation 40, shifts 0.2, shear 0.2, zoom 0.2), RMSprop 2e-5, 30 epochs: phase 1 of
configs/seed004_cats_dogs_vgg16.py.

Reported: about 90% validation accuracy.

    research reproduce seed004_cats_dogs_vgg16_frozen_aug
"""
from research.experiments import recipes


def get_config():
    return recipes.seed004(0.90, "~90%", phases=({"freeze": "head", "epochs": 30},))
