"""Kornblith, Shlens & Le (CVPR 2019), supervised ResNet-50 on flowers102, linear evaluation: L-BFGS logistic
regression on the pre_logits features of 224 px centre crops (method lbfgs), on the dataset's own train/test
splits.

Reported: 94.7% test accuracy (linear 94.7 / fine-tuned 97.6, as reprinted in SimCLR Table 8 and BYOL Table 3).
Weights: torchvision ResNet-50 IMAGENET1K_V1 (resnet50-0676ba61.pth).

    research reproduce kornblith_r50_linear_flowers102
"""
from research.experiments import recipes


def get_config():
    return recipes.kornblith_linear("flowers102", 94.7 / 100)
