"""Thai word segmentation: a bidirectional LSTM tags each character as word start or not.

  jaxdl-train --config=configs/wordseg_bilstm.py --workdir=runs/wordseg
  jaxdl-wordseg --workdir=runs/wordseg --dictionary "ภาษาไทยเขียนติดกัน"
  python experiments/wordseg_report.py --workdir runs/wordseg

Data: ORCHID Thai running text in 64-character chunks whose test split holds
out-of-vocabulary words (see jaxdl.data.word_segmentation). The GRU variant is
`--config.model.name=gru`. Three epochs take about 70 s of CPU time (about a minute
on an idle 2-core CPU; far longer when the cores are shared).
"""

import ml_collections

from configs import base
from jaxdl.data import word_segmentation


def get_config() -> ml_collections.ConfigDict:
    """Character embedding, one bidirectional LSTM layer, a 2-way softmax per character."""
    config = base.get_config()
    config.model.name = "lstm"
    config.model.kwargs = ml_collections.ConfigDict(
        dict(
            vocab_size=word_segmentation.VOCAB_SIZE,
            embed_dim=32,
            hidden_size=64,
            num_layers=1,
            bidirectional=True,
            output="sequence",
        )
    )
    config.task.name = "tagging"
    config.task.num_classes = 2  # 1: a word starts at this character, 0: it does not.
    config.dataset.name = "word_segmentation"
    config.dataset.input_key = "characters"
    config.dataset.target_key = "tags"
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 5e-3
    config.optimizer.grad_clip_norm = 1.0
    config.schedule.name = "cosine"
    config.schedule.warmup_steps = 20
    config.training.batch_size = 64
    config.training.num_epochs = 3.0  # 1,170 steps of 64 chunks.
    config.training.eval_every_steps = 390  # Once an epoch.
    config.training.checkpoint_every_steps = 390
    config.training.log_every_steps = 50
    return config
