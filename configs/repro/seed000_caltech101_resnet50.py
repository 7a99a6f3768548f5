"""Seed 000: Caltech-101, Keras ResNet-50 (ImageNet, no top) frozen under a new head
(GAP-BN-Dropout-Dense(512)-BN-Dropout-Dense), Adam, 5 epochs, 256 px, 20% of each class held out for test.

Reported: 92.8% test accuracy. Runs configs/seed000_caltech101_resnet50.py unchanged.

    research reproduce seed000_caltech101_resnet50 --data 101_ObjectCategories/
"""
from research.experiments import recipes


def get_config():
    return recipes.experiment(
        "finetune", "Seed 000 (Keras ResNet50 head-only fine-tune on Caltech-101, 20% per-class test split)",
        0.928, "92.8%", recipes.R50_KERAS, "", "caltech101", "keras:resnet50_notop",
        data_note=("the 101_ObjectCategories/ folder (every class incl. BACKGROUND_Google); TFDS caltech101's "
                   "fixed 30-per-class training split is another protocol"),
        finetune=dict(config="configs/seed000_caltech101_resnet50.py", overrides={}))
