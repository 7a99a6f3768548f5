"""Kornblith, Shlens & Le (CVPR 2019), supervised ResNet-50 on Caltech-101, fine-tuning of all layers (Sec. 4.2;
the
appendix's fine-tuning protocol): SGD with Nesterov momentum 0.9, cosine decay, batch 256, 20,000 steps,
random-resized crops and flips; one lr/weight-decay point of the paper's grid as
its final fit, trained on the paper's training set.

Metric: mean per-class accuracy on test, as the paper reports for this dataset.
Reported: 93.3% (linear 94.5 / fine-tuned 93.3, as reprinted in SimCLR Table 8 and BYOL Table 3).
Weights: torchvision ResNet-50 IMAGENET1K_V1 (resnet50-0676ba61.pth).

    research reproduce kornblith_r50_finetune_caltech101
"""
from research.experiments import recipes


def get_config():
    return recipes.kornblith_finetune("caltech101", 93.3 / 100)
