"""GoogLeNet (Inception v1, Szegedy et al., 2015) laid out like torchvision's, so its ImageNet weights import."""

from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxdl.models import layers
from jaxdl.models.registry import Check, positive, probability, register

# torchvision draws conv and linear weights from N(0, 0.01) truncated at +-2 (absolute), i.e. untruncated in effect.
_INIT = nn.initializers.normal(0.01)

# (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj) of each inception module, as in the paper and torchvision.
_INCEPTION = {
    "inception3a": (64, 96, 128, 16, 32, 32),
    "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64),
    "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64),
    "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128),
    "inception5a": (256, 160, 320, 32, 128, 128),
    "inception5b": (384, 192, 384, 48, 128, 128),
}

# torchvision's transform_input: maps an ImageNet-normalised image to the [-1, 1] scaling the ported weights expect.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _pooled_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """Output length of a torch pooling window along one axis."""
    span = size + 2 * padding - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    # torch drops a last window that would start in the right padding.
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def max_pool(x: jax.Array, kernel: int, stride: int, padding: int = 0, ceil_mode: bool = False) -> jax.Array:
    """torch.nn.MaxPool2d on NHWC input; ceil_mode is emulated with extra bottom/right padding of -inf."""
    pads = []
    for size in x.shape[1:3]:
        out = _pooled_size(size, kernel, stride, padding, ceil_mode)
        extra = max((out - 1) * stride + kernel - (size + 2 * padding), 0)
        pads.append((padding, padding + extra))
    return nn.max_pool(x, (kernel, kernel), strides=(stride, stride), padding=pads)


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
    """torch's adaptive_avg_pool2d on NHWC input: bin i of n covers [floor(i*L/n), ceil((i+1)*L/n))."""
    for axis, out in zip((1, 2), output_size, strict=True):
        size = x.shape[axis]
        if size % out == 0:
            shape = x.shape[:axis] + (out, size // out) + x.shape[axis + 1 :]
            x = jnp.mean(x.reshape(shape), axis=axis + 1)
            continue
        bins = []
        for i in range(out):
            start, stop = (i * size) // out, -(-((i + 1) * size) // out)
            bins.append(jnp.mean(lax.slice_in_dim(x, start, stop, axis=axis), axis=axis, keepdims=True))
        x = jnp.concatenate(bins, axis=axis)
    return x


class BasicConv2d(nn.Module):
    """Conv (no bias) - BatchNorm (eps 1e-3) - ReLU: torchvision's BasicConv2d."""

    features: int
    kernel: int
    stride: int = 1
    padding: int = 0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Applies the block to NHWC `x`."""
        p = self.padding
        x = layers.Conv(
            self.features,
            (self.kernel, self.kernel),
            strides=(self.stride, self.stride),
            padding=((p, p), (p, p)),
            use_bias=False,
            kernel_init=_INIT,
            dtype=self.dtype,
            name="conv",
        )(x)
        x = layers.batch_norm(train, epsilon=1e-3, dtype=self.dtype, name="bn")(x)
        return nn.relu(x)


class Inception(nn.Module):
    """Four parallel branches concatenated on channels: 1x1; 1x1-3x3; 1x1-3x3; max-pool 3x3/1 - 1x1.

    The third branch is the paper's 5x5 branch, but torchvision (whose weights we import) uses a 3x3
    convolution there (pytorch/vision#906); we match torchvision.
    """

    channels: tuple[int, int, int, int, int, int]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Applies the module to NHWC `x`."""
        ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj = self.channels
        conv = lambda features, kernel, name: BasicConv2d(
            features, kernel, padding=kernel // 2, dtype=self.dtype, name=name
        )
        branch1 = conv(ch1x1, 1, "branch1")(x, train)
        branch2 = conv(ch3x3, 3, "branch2_1")(conv(ch3x3red, 1, "branch2_0")(x, train), train)
        branch3 = conv(ch5x5, 3, "branch3_1")(conv(ch5x5red, 1, "branch3_0")(x, train), train)
        pooled = max_pool(x, 3, 1, padding=1, ceil_mode=True)
        branch4 = conv(pool_proj, 1, "branch4_1")(pooled, train)
        return jnp.concatenate([branch1, branch2, branch3, branch4], axis=-1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: adaptive avg-pool to 4x4, BasicConv 1x1, flatten (CHW order), FC-ReLU-Dropout-FC."""

    num_outputs: int
    conv_features: int = 128
    hidden_features: int = 1024
    dropout_rate: float = 0.7
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits of shape (batch, num_outputs) from an NHWC feature map."""
        x = adaptive_avg_pool(x, (4, 4))
        x = BasicConv2d(self.conv_features, 1, dtype=self.dtype, name="conv")(x, train)
        # torch flattens N x C x 4 x 4, so fc1's input order is channel-major.
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape((x.shape[0], -1))
        x = nn.Dense(self.hidden_features, kernel_init=_INIT, dtype=self.dtype, name="fc1")(x)
        x = nn.relu(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_outputs, kernel_init=_INIT, dtype=self.dtype, name="fc2")(x)


@register("googlenet")
# For tests: the full topology (nine inception modules, both aux heads) at 1/8 of the channels.
@register("googlenet_tiny", width=0.125, image_size=32)
class GoogLeNet(nn.Module):
    """GoogLeNet / Inception v1 as in torchvision, with the two auxiliary classifiers used in training.

    With `aux_logits=True`, `__call__(x, train=True)` returns `(logits, aux1_logits, aux2_logits)`
    (aux1 reads inception4a, aux2 reads inception4d); in eval mode it returns only the logits. The aux
    heads' parameters exist whenever `aux_logits=True` (they are created at init even in eval mode).

    The ImageNet stem is Conv7x7/2 - MaxPool3x3/2 - Conv1x1 - Conv3x3 - MaxPool3x3/2 with the max-pools in
    torch's ceil mode (emulated exactly). With `cifar_stem=True` conv1 is 3x3 with stride 1 and the two
    stem max-pools are dropped, so a 32x32 input reaches inception3 at 32x32, inception4 at 16x16 and
    inception5 at 8x8.

    Flax variable names follow torchvision's (`conv1/conv`, `conv1/bn`, `inception3a/branch2_1/conv`,
    `aux1/fc1`), except that the final classifier `fc` is `head`.

    Attributes:
      num_outputs: number of classes.
      aux_logits: build the auxiliary classifiers and return their logits in training.
      dropout_rate: dropout before the head (torchvision: 0.2).
      aux_dropout_rate: dropout inside the aux heads (torchvision: 0.7).
      transform_input: rescale ImageNet-normalised input channels to [-1, 1] first, as torchvision does
        for its IMAGENET1K_V1 weights (`googlenet(weights=...)` turns it on).
      width: multiplier on every channel count (1.0 = torchvision's GoogLeNet); for small test models.
      image_size: reference input resolution.
      cifar_stem: use the 3x3 stride-1 stem without max-pools for 32x32 inputs.
      features_only: return {stride: feature map} instead of logits, the last map
        before each max-pool and the final one: {2: conv1, 4: conv3, 8: inception3b,
        16: inception4e, 32: inception5b}; with `cifar_stem` {1: inception3b,
        2: inception4e, 4: inception5b}. Neither the head nor the aux heads are built.
      dtype: computation dtype (parameters stay float32).
    """

    num_outputs: int
    aux_logits: bool = True
    dropout_rate: float = 0.2
    aux_dropout_rate: float = 0.7
    transform_input: bool = False
    width: float = 1.0
    image_size: int = 224
    cifar_stem: bool = False
    features_only: bool = False
    dtype: Any = jnp.float32

    checks: ClassVar[Mapping[str, Check]] = {
        "dropout_rate": probability,
        "aux_dropout_rate": probability,
        "width": positive,
        "image_size": positive,
    }

    def _channels(self, channels: int) -> int:
        return max(1, round(channels * self.width))

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = False
    ) -> jax.Array | tuple[jax.Array, jax.Array, jax.Array] | dict[int, jax.Array]:
        """Logits (batch, num_outputs), or (logits, aux1, aux2) when training with aux_logits.

        With `features_only`: {stride: feature map}.
        """
        c = self._channels
        common = {"dtype": self.dtype}
        if self.transform_input:
            scale = jnp.asarray([s / 0.5 for s in _IMAGENET_STD], x.dtype)
            shift = jnp.asarray([(m - 0.5) / 0.5 for m in _IMAGENET_MEAN], x.dtype)
            x = x * scale + shift

        # The last map at each stride: a later layer at the same stride replaces an earlier one.
        features = {}
        if self.cifar_stem:
            x = BasicConv2d(c(64), 3, padding=1, name="conv1", **common)(x, train)
            stride = 1
        else:
            x = BasicConv2d(c(64), 7, stride=2, padding=3, name="conv1", **common)(x, train)
            features[2] = x
            x = max_pool(x, 3, 2, ceil_mode=True)
            stride = 4
        x = BasicConv2d(c(64), 1, name="conv2", **common)(x, train)
        x = BasicConv2d(c(192), 3, padding=1, name="conv3", **common)(x, train)
        features[stride] = x
        if not self.cifar_stem:
            x = max_pool(x, 3, 2, ceil_mode=True)
            stride *= 2

        # Aux heads run in training; at init they also run so that their parameters exist.
        use_aux = self.aux_logits and not self.features_only and (train or self.is_initializing())
        aux = []
        for name, channels in _INCEPTION.items():
            if name == "inception4a":
                x = max_pool(x, 3, 2, ceil_mode=True)
                stride *= 2
            elif name == "inception5a":
                x = max_pool(x, 2, 2, ceil_mode=True)
                stride *= 2
            x = Inception(tuple(c(ch) for ch in channels), name=name, **common)(x, train)
            features[stride] = x
            if use_aux and name in ("inception4a", "inception4d"):
                head = InceptionAux(
                    self.num_outputs,
                    conv_features=c(128),
                    hidden_features=c(1024),
                    dropout_rate=self.aux_dropout_rate,
                    name=f"aux{len(aux) + 1}",
                    **common,
                )
                aux.append(head(x, train))

        if self.features_only:
            return features
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        logits = nn.Dense(self.num_outputs, kernel_init=_INIT, dtype=self.dtype, name="head")(x)
        if self.aux_logits and train:
            return logits, aux[0], aux[1]
        return logits
