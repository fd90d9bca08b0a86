# pyright: basic
"""The compact ResNet of the PyImageSearch malaria recipe, and optional keras.applications backbones.

Inputs are float32 pixels in [0, 255]; the scaling to [0, 1] is the graph's first layer, so the
device only decodes, resizes and casts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import keras
from keras import layers, regularizers

from edgekit.errors import EdgekitError

BN_EPS = 2e-5
BN_MOMENTUM = 0.9


def _bn(x):
    return layers.BatchNormalization(epsilon=BN_EPS, momentum=BN_MOMENTUM)(x)


def residual_module(x, filters: int, stride: int, reduce: bool, l2: float):
    """Pre-activation bottleneck: BN-ReLU-1x1(K/4), BN-ReLU-3x3(K/4, stride), BN-ReLU-1x1(K),
    with a 1x1 projection shortcut (from the first activation) where the shape changes."""
    reg = regularizers.l2(l2) if l2 else None
    inner = max(1, int(filters * 0.25))
    act1 = layers.Activation("relu")(_bn(x))
    y = layers.Conv2D(inner, 1, use_bias=False, kernel_regularizer=reg)(act1)
    y = layers.Activation("relu")(_bn(y))
    y = layers.Conv2D(inner, 3, strides=stride, padding="same", use_bias=False, kernel_regularizer=reg)(y)
    y = layers.Activation("relu")(_bn(y))
    y = layers.Conv2D(filters, 1, use_bias=False, kernel_regularizer=reg)(y)
    shortcut = x
    if reduce:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, kernel_regularizer=reg)(act1)
    return layers.Add()([y, shortcut])


# Named recipes (``edgekit train --recipe NAME``): keyword arguments of :func:`build_resnet`.
# "seed" is the builder's default (the PyImageSearch recipe); "w8" was the default bundle's model
# until the fast one; the "fast*" recipes downsample in the stem and use int8-friendly widths.
RECIPES: dict[str, dict] = {
    "seed": {"stages": (3, 4, 6), "filters": (64, 128, 256, 512)},
    "w8": {"stages": (2, 2, 2), "filters": (8, 16, 32, 64)},
    "fast16": {"stages": (1, 1, 1), "filters": (16, 32, 64, 128), "stem_stride": 2},
    "fast16x2": {"stages": (2, 2, 2), "filters": (16, 32, 64, 128), "stem_stride": 2},
    "fast32": {"stages": (1, 1, 1), "filters": (16, 64, 128, 256), "stem_stride": 2},
    "fast16p": {"stages": (1, 1, 1), "filters": (16, 32, 64, 128), "stem_stride": 2, "stem_pool": 2},
    "fast32p": {"stages": (1, 1, 1), "filters": (32, 64, 128, 256), "stem_stride": 2, "stem_pool": 2},
    "fast32px2": {"stages": (2, 2, 2), "filters": (32, 64, 128, 256), "stem_stride": 2, "stem_pool": 2},
}


def build_resnet(
    input_shape: Sequence[int] = (64, 64, 3),
    num_classes: int = 2,
    stages: Sequence[int] = (3, 4, 6),
    filters: Sequence[int] = (64, 128, 256, 512),
    l2: float = 5e-4,
    name: str = "edgekit_resnet",
    stem_stride: int = 1,
    stem_pool: int = 1,
) -> keras.Model:
    """The malaria ResNet: a stem conv with ``filters[0]``, then one stage of bottleneck modules
    per entry of ``stages`` with ``filters[i + 1]`` output channels (stride 2 from stage two).

    The default is the seed-sized model (~2.16 M parameters, ~1.06 GMAC at 64x64). The fast
    recipes downsample early: ``stem_stride`` 2 makes the stem conv strided, ``stem_pool`` 2 adds a
    2x2 max pool after it, so the residual stages run at 1/2 or 1/4 of the input side.
    """
    if len(filters) != len(stages) + 1:
        raise EdgekitError(f"filters needs len(stages) + 1 = {len(stages) + 1} entries, got {len(filters)}")
    if any(s < 1 for s in stages) or any(f < 1 for f in filters):
        raise EdgekitError("stages and filters must be positive")
    if stem_stride not in (1, 2) or stem_pool not in (1, 2):
        raise EdgekitError("stem stride and stem pool must be 1 or 2")
    reg = regularizers.l2(l2) if l2 else None
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="scale_0_1")(inputs)
    x = _bn(x)
    x = layers.Conv2D(filters[0], 3, strides=stem_stride, padding="same", use_bias=False,
                      kernel_regularizer=reg)(x)
    if stem_pool > 1:
        x = layers.MaxPooling2D(stem_pool)(x)
    for i, depth in enumerate(stages):
        stride = 1 if i == 0 else 2
        x = residual_module(x, filters[i + 1], stride, reduce=True, l2=l2)
        for _ in range(depth - 1):
            x = residual_module(x, filters[i + 1], 1, reduce=False, l2=l2)
    x = layers.Activation("relu")(_bn(x))
    # The recipe's 8x8 average pool + flatten at 64x64 input; global pooling when the map is smaller.
    if min(x.shape[1], x.shape[2]) >= 8:
        x = layers.AveragePooling2D(8)(x)
        x = layers.Flatten()(x)
    else:
        x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(num_classes, kernel_regularizer=reg)(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


BACKBONES = {
    # name: (constructor, in-graph preprocessing from [0, 255], minimum input side)
    "mobilenetv3small": ("MobileNetV3Small", None, 32),  # it rescales internally
    "inceptionv3": ("InceptionV3", (1.0 / 127.5, -1.0), 75),
}


def build_transfer(
    backbone: str,
    input_shape: Sequence[int] = (64, 64, 3),
    num_classes: int = 2,
    weights: str = "none",
    dropout: float = 0.2,
) -> keras.Model:
    """A ``keras.applications`` backbone with a new softmax head (the SIIM tutorial's approach).

    ``weights``: ``imagenet`` (downloaded by Keras; needs network), a path to a ``.h5``/``.weights.h5``
    file of backbone weights, or ``none`` for random initialisation.
    """
    key = backbone.lower().replace("-", "").replace("_", "")
    if key not in BACKBONES:
        raise EdgekitError(f"unknown backbone {backbone!r}; choose from {sorted(BACKBONES)}")
    ctor_name, scaling, min_side = BACKBONES[key]
    if min(input_shape[:2]) < min_side:
        raise EdgekitError(f"{backbone} needs inputs of at least {min_side}x{min_side}")
    ctor = getattr(keras.applications, ctor_name)
    local_weights = None
    if weights == "none":
        keras_weights = None
    elif weights == "imagenet":
        keras_weights = "imagenet"
    else:
        if not os.path.isfile(weights):
            raise EdgekitError(f"weights file not found: {weights}")
        keras_weights, local_weights = None, weights
    kwargs = {
        "include_top": False,
        "weights": keras_weights,
        "input_shape": tuple(input_shape),
        "pooling": "avg",
    }
    if key == "mobilenetv3small":
        kwargs["include_preprocessing"] = True
    try:
        base = ctor(**kwargs)
    except Exception as exc:  # network errors when imagenet weights cannot be fetched
        raise EdgekitError(f"could not build {backbone} with weights={weights}: {exc}") from exc
    if local_weights:
        try:
            base.load_weights(local_weights)
        except Exception as exc:
            raise EdgekitError(f"could not load backbone weights from {local_weights}: {exc}") from exc
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    if scaling:
        x = layers.Rescaling(scaling[0], offset=scaling[1], name="scale")(x)
    x = base(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    x = layers.Dense(num_classes)(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"edgekit_{key}")


def count_macs(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass for Conv2D/Dense layers (batch 1)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            kh, kw = layer.kernel_size
            cin = layer.input.shape[-1]
            _, oh, ow, cout = layer.output.shape
            total += kh * kw * cin * oh * ow * cout
        elif isinstance(layer, layers.Dense):
            total += layer.input.shape[-1] * layer.units
    return int(total)
