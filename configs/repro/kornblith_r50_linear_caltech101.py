"""Kornblith, Shlens & Le (CVPR 2019), supervised ResNet-50 on Caltech-101, linear evaluation (Sec. 4.1; the
appendix's dataset table and logistic-regression protocol): L-BFGS multinomial logistic regression on the
pre_logits features of 224 px centre crops, the L2 strength chosen among 45 log-spaced values in [1e-6, 1e5].

Splits: 30 training images per class over 102 classes, the background class included (3,060; TFDS train), the rest
for test (6,084); the strength is chosen on 20% of each class carved from the 3,060, then refit on all of them.
Metric: mean per-class accuracy, as the paper reports for this dataset.
Reported: 94.5% (linear 94.5 / fine-tuned 93.3, as reprinted in SimCLR Table 8 and BYOL Table 3).
Weights: torchvision ResNet-50 IMAGENET1K_V1 (resnet50-0676ba61.pth).

    research reproduce kornblith_r50_linear_caltech101
"""
from research.experiments import recipes


def get_config():
    return recipes.kornblith_linear("caltech101", 94.5 / 100)
