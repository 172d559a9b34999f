"""ViT-S on CIFAR-10: 4x4 patches of 32x32 images (64 tokens and a class token).

  jaxdl-train --config=configs/cifar10_vit_s_16.py --workdir=runs/cifar10_vit_s

ViT-S/16's encoder (12 layers, width 384, 6 heads) with patch size 4 at 32x32,
since 16x16 patches would leave 4 tokens. Without ImageNet pre-training ViTs need
strong regularisation on small data, so the recipe is the data-efficient one of
Touvron et al. 2021 (DeiT) scaled to CIFAR: AdamW, batch 512, learning rate
5e-4 x 512/512, weight decay 0.05, cosine decay with 5% warmup, 300 epochs,
label smoothing 0.1, mixup 0.8, cutmix 1.0, stochastic depth 0.1.
"""

import ml_collections

from configs import base, vision


def get_config() -> ml_collections.ConfigDict:
    """ViT-S with patch 4 on CIFAR-10, DeiT-style regularisation."""
    config = base.get_config()
    vision.cifar10(config)
    config.model.name = "vit_s_16"
    config.model.kwargs = ml_collections.ConfigDict(dict(image_size=32, patch_size=4, stochastic_depth_rate=0.1))
    config.task.label_smoothing = 0.1
    config.augment.mixup_alpha = 0.8
    config.augment.cutmix_alpha = 1.0
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 5e-4
    config.optimizer.weight_decay = 0.05
    config.optimizer.grad_clip_norm = 1.0
    config.schedule.name = "cosine"
    config.schedule.warmup_steps = 1300  # 5% of 300 epochs at 88 steps per epoch.
    config.training.batch_size = 512
    config.training.num_epochs = 300.0
    config.training.eval_every_steps = 1000
    config.training.checkpoint_every_steps = 1000
    config.training.log_every_steps = 100
    return config
