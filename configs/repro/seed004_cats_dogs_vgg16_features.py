"""Seed 004, first recipe: VGG16 features, then a dense head (Flatten-Dense(256)-Dropout(0.5)-Dense) trained on
them for 30 epochs with RMSprop 2e-5, no augmentation. Training the head on a frozen, un-augmented base is the
same computation as training it on extracted features.

Reported: about 90% validation accuracy.

    research reproduce seed004_cats_dogs_vgg16_features      # or --data cats_and_dogs_small/
"""
from research.experiments import recipes


def get_config():
    return recipes.seed004(0.90, "~90%", phases=(), augment={}, freeze="head", epochs=30)
