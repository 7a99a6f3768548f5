"""Kornblith, Shlens & Le (CVPR 2019), supervised ResNet-50 on Oxford 102 Flowers, linear evaluation (Sec. 4.1; the
appendix's dataset table and logistic-regression protocol): L-BFGS multinomial logistic regression on the
pre_logits features of 224 px centre crops, the L2 strength chosen among 45 log-spaced values in [1e-6, 1e5].

Splits: the strength chosen on the given validation split (1,020), the final fit on train + validation (2,040),
test 6,149. Metric: mean per-class accuracy, as the paper reports for this dataset.
Reported: 94.7% (linear 94.7 / fine-tuned 97.6, as reprinted in SimCLR Table 8 and BYOL Table 3).
Weights: torchvision ResNet-50 IMAGENET1K_V1 (resnet50-0676ba61.pth).

    research reproduce kornblith_r50_linear_flowers102
"""
from research.experiments import recipes


def get_config():
    return recipes.kornblith_linear("flowers102", 94.7 / 100)
