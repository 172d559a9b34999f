"""Mixup and CutMix on device, inside the jitted train step.

Mixing pairs example i with example B-1-i of the *global* batch (the batch
reversed), with one lambda per batch drawn from the step's key. Under `jit` the
batch is one array sharded over the mesh, so the pairs and the lambda are the
same for any number of devices or processes. Under `pmap` each device mixes
within its own shard, with its own key.

Targets are soft (probabilities per class), mixed with the same lambda; CutMix's
lambda is corrected to the pasted box's true area after clipping to the image.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections

from jaxdl.errors import check_at_least, check_fraction


@dataclasses.dataclass(frozen=True)
class MixConfig:
    """What `mix` does; built from config.augment."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    switch_prob: float = 0.5

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> MixConfig:
        """From config.augment; bad values raise a ConfigError naming the key."""
        for key in ("mixup_alpha", "cutmix_alpha"):
            check_at_least(f"augment.{key}", config[key], 0)
        check_fraction("augment.switch_prob", config.switch_prob, closed=True)
        return cls(config.mixup_alpha, config.cutmix_alpha, config.switch_prob)

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def cutmix_box(rng: jax.Array, lam: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """A box covering about (1 - lam) of the image, centred uniformly, clipped to it.

    Returns the [height, width] boolean mask of the box and the corrected lambda
    (the fraction of the image outside the box).
    """
    ratio = jnp.sqrt(1.0 - lam)
    cut_h, cut_w = jnp.floor(height * ratio), jnp.floor(width * ratio)
    ky, kx = jax.random.split(rng)
    cy = jax.random.randint(ky, (), 0, height)
    cx = jax.random.randint(kx, (), 0, width)
    y0 = jnp.clip(cy - cut_h // 2, 0, height)
    y1 = jnp.clip(cy + cut_h // 2, 0, height)
    x0 = jnp.clip(cx - cut_w // 2, 0, width)
    x1 = jnp.clip(cx + cut_w // 2, 0, width)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    mask = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    corrected = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
    return mask, corrected


def mix(
    rng: jax.Array, images: jax.Array, targets: jax.Array, config: MixConfig
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mixed images [B, H, W, C] and soft targets [B, K]; also returns the batch's lambda."""
    k_switch, k_mixup, k_cutmix, k_box = jax.random.split(rng, 4)
    if not jnp.issubdtype(images.dtype, jnp.floating):  # uint8 images: blend in float.
        images = images.astype(jnp.float32)
    partner_images, partner_targets = images[::-1], targets[::-1]
    candidates = []
    if config.mixup_alpha > 0:
        lam = jax.random.beta(k_mixup, config.mixup_alpha, config.mixup_alpha)
        mixed = lam * images + (1.0 - lam) * partner_images
        candidates.append((mixed.astype(images.dtype), lam))
    if config.cutmix_alpha > 0:
        lam = jax.random.beta(k_cutmix, config.cutmix_alpha, config.cutmix_alpha)
        mask, lam = cutmix_box(k_box, lam, images.shape[1], images.shape[2])
        mixed = jnp.where(mask[None, :, :, None], partner_images, images)
        candidates.append((mixed, lam))
    if not candidates:
        raise ValueError("mix() called with mixup_alpha and cutmix_alpha both 0")
    if len(candidates) == 1:
        (mixed, lam) = candidates[0]
    else:
        use_cutmix = jax.random.bernoulli(k_switch, config.switch_prob)
        mixed = jnp.where(use_cutmix, candidates[1][0], candidates[0][0])
        lam = jnp.where(use_cutmix, candidates[1][1], candidates[0][1])
    lam = lam.astype(jnp.float32)
    return mixed, lam * targets + (1.0 - lam) * partner_targets, lam
