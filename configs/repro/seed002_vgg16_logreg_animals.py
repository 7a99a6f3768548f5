"""Seed 002: Animals (3 classes: cats, dogs, pandas; 3,000 images), Keras VGG16 block5_pool features flattened,
LogisticRegression with C by GridSearchCV, 75/25 split.

Reported: 0.99 accuracy. Animals has no TFDS build: the class folders must be given with --data.

    research reproduce seed002_vgg16_logreg_animals --data animals/
"""
from research.experiments import recipes


def get_config():
    return recipes.seed002("animals", 0.99, "0.99",
                           data_note="the Animals class folders (cats/ dogs/ panda/); it has no TFDS build")
