"""ViT-B/16 trained from scratch on ImageNet-1k, the recipe of Dosovitskiy et al. 2021.

  jaxdl-train --config=configs/imagenet_vit_b_16.py --workdir=runs/imagenet_vit_b_16

"An Image is Worth 16x16 Words", Appendix B.1 / Table 3 (ImageNet): Adam
(beta1 0.9, beta2 0.999), batch 4096, base learning rate 3e-3 with 10k warmup
steps and cosine decay, weight decay 0.3, dropout 0.1, global gradient-norm clip
at 1, 300 epochs, 224x224 inputs. The paper's weight decay is decoupled, hence
AdamW here.
"""

import ml_collections

from configs import base, vision


def get_config() -> ml_collections.ConfigDict:
    """ViT-B/16, 300 epochs, batch 4096."""
    config = base.get_config()
    vision.imagenet(config)
    config.model.name = "vit_b_16"
    config.model.kwargs = ml_collections.ConfigDict(dict(dropout_rate=0.1))
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 3e-3
    config.optimizer.weight_decay = 0.3
    config.optimizer.grad_clip_norm = 1.0
    config.schedule.name = "cosine"
    config.schedule.warmup_steps = 10_000
    config.training.batch_size = 4096
    config.training.num_epochs = 300.0
    return config
