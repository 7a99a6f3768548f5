"""Train a fresh linear head on frozen ImageNet features: the defaults with a split and five epochs.

    research finetune --config configs/finetune_head.py --workdir runs/head \
        --config.weights=resnet50.h5 --config.data=path/to/class_folders

Expected: a few epochs reach roughly the accuracy of a linear probe on the same features (research probe),
since only `head/fc` trains and every BatchNorm stays on its ImageNet statistics.
"""
from research.train.config import defaults


def get_config():
    c = defaults()
    c.split = dict(test=0.2, validation=0.1)
    c.epochs = 5
    return c
