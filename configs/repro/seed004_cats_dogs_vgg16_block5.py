"""Seed 004, third recipe: after the frozen-base phase, block5 is unfrozen and trained with the head at RMSprop
1e-5 (configs/seed004_cats_dogs_vgg16.py as it is).

Reported: 93-96% validation accuracy.

    research reproduce seed004_cats_dogs_vgg16_block5
"""
from research.experiments import recipes


def get_config():
    return recipes.seed004(0.945, "93-96%")
