"""Train a fresh linear head on frozen ImageNet features (the base every other config starts from).

    research finetune --config configs/finetune_head.py --workdir runs/head \
        --config.weights=resnet50.h5 --config.data=path/to/class_folders

Expected: a few epochs reach roughly the accuracy of a linear probe on the same features (research probe),
since only `head/fc` trains and every BatchNorm stays on its ImageNet statistics.
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.weights = ""
    c.data = ""
    c.split = dict(test=0.2, validation=0.1)
    c.image_size = 224
    c.batch_size = 32
    c.epochs = 5
    c.freeze = "head"
    c.optimizer = dict(name="adam")
    c.learning_rate = 1e-3
    c.schedule = dict(name="constant")
    c.seed = 0
    return c
