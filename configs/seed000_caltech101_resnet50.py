"""Seed 000: Caltech-101 on Keras ResNet-50, head only: GAP-BN-Dropout-Dense(512)-BN-Dropout-Dense(101), Adam,
5 epochs, 256 px inputs, 20% of each class held out for test.

    research finetune --config configs/seed000_caltech101_resnet50.py --workdir runs/seed000 \
        --config.weights=resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 \
        --config.data=101_ObjectCategories/

Expected: test accuracy around 0.90 (the seed's Keras run reports about that for frozen ResNet-50 features;
the backbone's BatchNorm stays on ImageNet statistics, as Keras' `trainable = False` does). Caltech-101's
BACKGROUND_Google class counts as a class here, as a plain class-folder listing gives it.
"""
from research.train.config import defaults


def get_config():
    c = defaults()
    c.split = dict(test=0.2, validation=0.0)
    c.image_size = 256
    c.epochs = 5
    c.head = dict(hidden=(512,), dropout=0.5, batch_norm=True)
    return c
