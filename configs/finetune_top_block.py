"""Fine-tune the last block (ResNet stage4, VGG block5 and fc1/fc2, EfficientNet stage7 and top) and a fresh head.

    research finetune --config configs/finetune_top_block.py --workdir runs/top \
        --config.weights=resnet50.h5 --config.data=path/to/class_folders

Phase 1 trains the head alone so that its random init does not wreck the pretrained block; phase 2 unfreezes
the top block at a 10x smaller rate with SGD + Nesterov and a cosine schedule. Expected: a few points above
`finetune_head.py` on datasets unlike ImageNet, about equal on ImageNet-like ones.
"""
from research.train.config import defaults


def get_config():
    c = defaults()
    c.split = dict(test=0.2, validation=0.1)
    c.epochs = 3
    c.phases = (
        dict(freeze="head", epochs=3),
        dict(freeze="top_block", epochs=10, learning_rate=1e-3,
             optimizer=dict(name="sgd", momentum=0.9, nesterov=True, weight_decay=1e-4),
             schedule=dict(name="cosine", warmup_epochs=1.0)),
    )
    c.augment = dict(flip=True, rotation=0.0, shift=0.1, shear=0.0, zoom=0.1)
    return c
