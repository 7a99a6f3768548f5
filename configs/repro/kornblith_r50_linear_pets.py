"""Kornblith, Shlens & Le (CVPR 2019), supervised ResNet-50 on Oxford-IIIT Pets, linear evaluation (Sec. 4.1; the
appendix's dataset table and logistic-regression protocol): L-BFGS multinomial logistic regression on the
pre_logits features of 224 px centre crops, the L2 strength chosen among 45 log-spaced values in [1e-6, 1e5].

Splits: trainval (3,680; TFDS train) / test (3,669); no given validation, so lbfgs carves 20% of each class from
trainval to choose the strength, then refits on all 3,680. Metric: mean per-class accuracy, as the paper reports
for this dataset.
Reported: 91.5% (linear 91.5 / fine-tuned 92.1, as reprinted in SimCLR Table 8 and BYOL Table 3).
Weights: torchvision ResNet-50 IMAGENET1K_V1 (resnet50-0676ba61.pth).

    research reproduce kornblith_r50_linear_pets
"""
from research.experiments import recipes


def get_config():
    return recipes.kornblith_linear("pets", 91.5 / 100)
