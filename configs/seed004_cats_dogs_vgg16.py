"""Seed 004: cats vs dogs on Keras VGG-16 without its top: Flatten-Dense(256)-Dropout(0.5)-Dense(2).
Phase 1 trains the head alone; phase 2 unfreezes block5 with RMSprop at lr 1e-5, continuing from phase 1.

    research finetune --config configs/seed004_cats_dogs_vgg16.py --workdir runs/seed004 \
        --config.weights=vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 \
        --config.data=cats_and_dogs/   # train/ validation/ (test/) folders, or class folders

Expected: validation accuracy about 0.90 after phase 1 and about 0.94-0.96 after phase 2 (the seed's Keras run,
on 2000 training images with augmentation). 224 px, because a flatten head fixes the input size.
"""
from research.train.config import defaults


def get_config():
    c = defaults()
    c.split = dict(test=0.0, validation=0.2)  # used only when the data has no given splits
    c.batch_size = 20
    c.include_top = False
    c.head = dict(hidden=(256,), dropout=(0.0, 0.5), pool="flatten")
    c.epochs = 30
    c.optimizer = dict(name="rmsprop", eps=1e-7)
    c.learning_rate = 2e-5
    c.phases = (
        dict(freeze="head", epochs=30),
        dict(freeze=(("^(block5|head)/", "train"), (".*", "frozen")), epochs=100, learning_rate=1e-5),
    )
    c.augment = dict(flip=True, rotation=40.0, shift=0.2, shear=0.2, zoom=0.2)
    return c
