"""Cut a Keras classifier before its final softmax/sigmoid: every exported format ends at the logits.

An int8 output has 256 steps; holding probabilities it stops at 255/256 = 0.996, so a band edge
chosen on Keras at 0.999 is never reached and the top step mixes hundreds of validation crops of
both classes. Holding logits, the device applies the activation in float after dequantizing
(``edgekit.device.activation``) and keeps the model's full range. One graph for every format (one
code path); the manifest records ``output: logits`` and the activation per artifact. A model that
does not end in a recognisable softmax or sigmoid is exported as it is (``output: probabilities``).

:func:`export_graph` also folds an input ``Rescaling`` into the batch normalization it feeds (exact
in float). Left in the graph, the int8 converter gives the rescaled [0, 1] image the scale of the
normalization's output (~0.04: 25 grey levels instead of 256), and after fine-tuning moved the
normalization that coarse input collapsed int8 (IML validation cells: int8 vs Keras mean |dp| 0.45,
NIH agreement 81%; folded: 0.018 and 99.4%).

It also folds a batch normalization that follows a conv through a max pool into that conv
(:func:`fold_bn_before_pool`). Left after the pool, the converter cannot fold it: the pool's output
is quantized per tensor while the normalization's per-channel scales differ ~9x, so the low-range
channels lose most of their bits (the fast16p/fast32p recipes' int8 failed validation).

The last normalization (before the ReLU, the pooling and the Dense) goes into the Dense
(:func:`fold_bn_into_dense`): quantized per tensor, its output squeezed the channels of small scale
into a few steps, whose rounding biased the pooled model's int8 logits. And one that feeds a conv
directly (the stem's, on the pixels) goes into that conv (:func:`fold_bn_into_next_conv`): the
converter kept it as a per-channel MUL and ADD on the whole 64x64x3 image, half of the pooled
recipe's int8 time on one core.
"""

from __future__ import annotations

from collections.abc import Callable

from edgekit.manifest import ACTIVATIONS


def _activation_name(layer) -> str | None:
    cfg = layer.get_config()
    name = cfg.get("activation")
    return name if isinstance(name, str) and name in ACTIVATIONS else None


def logits_model(model) -> tuple[object, str | None]:
    """``(graph ending at the logits, activation name)``, or ``(model, None)`` when its last layer is
    neither an ``Activation`` layer nor a layer with an ``activation`` (e.g. ``Dense``) of softmax or
    sigmoid, or the model cannot be cut (several outputs, a nested last layer)."""
    import keras

    if len(model.outputs) != 1 or not model.layers:
        return model, None
    last = model.layers[-1]
    activation = _activation_name(last)
    if activation is None or model.outputs[0] is not last.output:
        return model, None
    if isinstance(last, keras.layers.Activation):
        head = keras.Model(model.inputs, last.input, name=f"{model.name}_logits")
    else:  # a layer computing with its activation built in (Dense(2, "softmax")): the same, linear
        cfg = {**last.get_config(), "activation": "linear", "name": f"{last.name}_logits"}
        linear = last.__class__.from_config(cfg)
        z = linear(last.input)
        linear.set_weights(last.get_weights())
        head = keras.Model(model.inputs, z, name=f"{model.name}_logits")
    return head, activation


def _only_consumer(layer, model):
    """The one layer of ``model`` that takes ``layer``'s output, or None."""
    users = [m for m in model.layers if m is not layer and any(
        t is layer.output for t in (m.input if isinstance(m.input, list) else [m.input]))]
    return users[0] if len(users) == 1 else None


def fold_input_rescaling(model):
    """``model`` with a scalar ``Rescaling(s, o)`` that feeds only a ``BatchNormalization`` replaced by
    an identity and the normalization's statistics set to ``BN'(x) = BN(s * x + o)``; the model
    itself when it has no such pair."""
    import keras
    import numpy as np

    pairs = []
    for layer in model.layers:
        rescaling = isinstance(layer, keras.layers.Rescaling)
        if rescaling and np.ndim(layer.scale) == np.ndim(layer.offset) == 0:
            bn = _only_consumer(layer, model)
            if isinstance(bn, keras.layers.BatchNormalization) and len(bn.get_weights()) == 4:
                pairs.append((layer, bn))
    if not pairs:
        return model
    folded = {id(r) for r, _ in pairs}
    stats = {}
    for r, bn in pairs:
        gamma, beta, mean, var = (np.asarray(w, np.float64) for w in bn.get_weights())
        s, o = float(r.scale), float(r.offset)
        stats[id(bn)] = [gamma, beta, (mean - o) / s, (var + bn.epsilon) / s**2 - bn.epsilon]

    def clone(layer):
        if id(layer) in folded:
            return keras.layers.Identity(name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    out = keras.models.clone_model(model, clone_function=clone)
    for old, new in zip(model.layers, out.layers, strict=True):
        if id(old) in stats:
            new.set_weights(stats[id(old)])
        elif old.weights:
            new.set_weights(old.get_weights())
    return out


def _rebuild(model, weights: dict[str, list], call=None):
    """A copy of ``model`` in which the layers named in ``weights`` hold those weights (a conv given
    a bias) and the others their own; ``call`` as in ``keras.models.clone_model``: it may skip a
    layer or add one after it. An earlier fold's ``Lambda`` is shared, not copied (Keras refuses to
    rebuild a Python lambda from its config)."""
    import keras

    def clone(layer):
        if isinstance(layer, keras.layers.Lambda):
            return layer
        cfg = layer.get_config()
        return layer.__class__.from_config({**cfg, "use_bias": True} if layer.name in weights else cfg)

    out = keras.models.clone_model(model, clone_function=clone, call_function=call)
    kept = {layer.name for layer in out.layers}
    for old in model.layers:
        if old.name in kept and old.weights:
            out.get_layer(old.name).set_weights(weights.get(old.name, old.get_weights()))
    return out


def _bn_affine(bn) -> tuple:
    """A batch normalization as float64 ``(scale, beta, mean)``: it computes ``scale * (x - mean) + beta``,
    ``scale = gamma / sqrt(var + epsilon)``."""
    import numpy as np

    gamma, beta, mean, var = (np.asarray(w, np.float64) for w in bn.get_weights())
    return gamma / np.sqrt(var + bn.epsilon), beta, mean


def _conv_pool_bn(model) -> list[tuple]:
    """``(conv, pool, bn)`` triples of ``model``: a linear channels-last ``Conv2D`` feeding only a
    ``MaxPooling2D`` that feeds only a channels-last ``BatchNormalization`` with all four weights."""
    import keras

    triples = []
    for conv in model.layers:
        if not isinstance(conv, keras.layers.Conv2D) or conv.data_format != "channels_last":
            continue
        if conv.get_config().get("activation") != "linear":
            continue
        pool = _only_consumer(conv, model)
        if not isinstance(pool, keras.layers.MaxPooling2D):
            continue
        bn = _only_consumer(pool, model)
        if (isinstance(bn, keras.layers.BatchNormalization) and bn.axis in (-1, 3)
                and len(bn.get_weights()) == 4):
            triples.append((conv, pool, bn))
    return triples


def fold_bn_before_pool(model, log: Callable[[str], None] | None = None):
    """``model`` with each ``Conv2D -> MaxPooling2D -> BatchNormalization`` whose per-channel scales
    ``gamma / sqrt(var + eps)`` are all >= 0 turned into ``Conv2D(with the BN folded in, bias) ->
    MaxPooling2D`` (the BN left out); the model itself when there is none.

    Exact in float: ``a * x + b`` with ``a >= 0`` is non-decreasing, so it commutes with a max. A
    negative scale would turn the max into a min; such a triple is left as it is and ``log`` says so.
    """
    import numpy as np

    weights, dropped = {}, set()
    for conv, pool, bn in _conv_pool_bn(model):
        scale, beta, mean = _bn_affine(bn)
        if (scale < 0).any():
            if log:
                log(f"{bn.name} after {pool.name} not folded into {conv.name}: "
                    f"{int((scale < 0).sum())} of {scale.size} channels have a negative scale")
            continue
        kernel, *bias = (np.asarray(w, np.float64) for w in conv.get_weights())
        shift = beta - mean * scale + (bias[0] * scale if bias else 0.0)
        weights[conv.name] = [(kernel * scale).astype(np.float32), shift.astype(np.float32)]
        dropped.add(bn.name)
        if log:
            log(f"{bn.name} folded into {conv.name} before {pool.name} "
                f"(scales {scale.min():.3g}-{scale.max():.3g}, all >= 0: exact)")
    if not weights:
        return model

    def call(layer, *args, **kwargs):
        return args[0] if layer.name in dropped else layer(*args, **kwargs)

    return _rebuild(model, weights, call)


def _bn_conv(model) -> list[tuple]:
    """``(bn, conv)`` pairs of ``model``: a channels-last ``BatchNormalization`` with all four weights
    feeding only a linear channels-last ``Conv2D`` without groups whose input size is known."""
    import keras

    pairs = []
    for bn in model.layers:
        if not isinstance(bn, keras.layers.BatchNormalization) or bn.axis not in (-1, 3):
            continue
        conv = _only_consumer(bn, model)
        if (isinstance(conv, keras.layers.Conv2D) and conv.data_format == "channels_last"
                and conv.groups == 1 and conv.get_config().get("activation") == "linear"
                and len(bn.get_weights()) == 4 and None not in bn.input.shape[1:3]):
            pairs.append((bn, conv))
    return pairs


def _border_map(conv, size: tuple[int, int], tap_shift):
    """What zero padding takes away from a conv of a constant input: at each output position, minus
    the sum of ``tap_shift[i, j]`` (the output a constant input gives through tap ``(i, j)``) over
    the taps that fall in the padding; zero inside. Shape ``(1, H', W', filters)``, float64."""
    import keras
    import numpy as np

    kh, kw = conv.kernel_size
    ones = np.ones((1, *size, 1), np.float32)
    total = 0.0
    for i in range(kh):
        for j in range(kw):
            tap = np.zeros((kh, kw, 1, 1), np.float32)
            tap[i, j] = 1.0
            inside = keras.ops.convert_to_numpy(keras.ops.conv(
                ones, tap, strides=conv.strides, padding=conv.padding, dilation_rate=conv.dilation_rate))
            total = total - (1.0 - inside.astype(np.float64)) * tap_shift[i, j]
    return total


def fold_bn_into_next_conv(model, log: Callable[[str], None] | None = None):
    """``model`` with each ``BatchNormalization -> Conv2D`` (:func:`_bn_conv`) turned into one conv:
    the kernel scaled per input channel by ``gamma / sqrt(var + eps)``, the shift's response in the
    bias; the model itself when there is none.

    Exact in float: the conv's zero padding pads the *normalized* input, so where ``same`` padding
    puts taps outside the image the shift is missing there; that border (for a stride-2 stem on an
    even size: the last row and column) is added back as a constant map after the conv.
    """
    import keras
    import numpy as np

    weights, border, dropped = {}, {}, set()
    for bn, conv in _bn_conv(model):
        scale, beta, mean = _bn_affine(bn)
        shift = beta - mean * scale
        kernel, *bias = (np.asarray(w, np.float64) for w in conv.get_weights())
        tap_shift = np.einsum("hwio,i->hwo", kernel, shift)
        full = tap_shift.sum(axis=(0, 1)) + (bias[0] if bias else 0.0)
        weights[conv.name] = [(kernel * scale[:, None]).astype(np.float32), full.astype(np.float32)]
        edge = _border_map(conv, tuple(bn.input.shape[1:3]), tap_shift)
        if np.any(edge):
            border[conv.name] = edge.astype(np.float32)
        dropped.add(bn.name)
        if log:
            log(f"{bn.name} folded into {conv.name}"
                + (" (border map added after it)" if conv.name in border else ""))
    if not weights:
        return model

    def call(layer, *args, **kwargs):
        if layer.name in dropped:
            return args[0]
        y = layer(*args, **kwargs)
        if layer.name not in border:
            return y
        edge = border[layer.name]
        return keras.layers.Lambda(lambda t: t + edge, name=f"{layer.name}_border")(y)

    return _rebuild(model, weights, call)


def _plain_relu(layer) -> bool:
    """``max(x, 0)`` exactly: an ``Activation("relu")`` or a ``ReLU`` without cap, slope or threshold."""
    import keras

    cfg = layer.get_config() if layer is not None else {}
    if isinstance(layer, keras.layers.Activation):
        return cfg.get("activation") == "relu"
    return (isinstance(layer, keras.layers.ReLU) and cfg.get("max_value") is None
            and not cfg.get("negative_slope") and not cfg.get("threshold"))


def _bn_relu_dense(model) -> list[tuple]:
    """``(bn, dense, rows)``: a channels-last ``BatchNormalization`` with all four weights, then a
    ReLU, then only average pools or a ``Flatten`` (linear per channel), then a ``Dense``; ``rows``
    how many kernel rows each channel has (a ``Flatten`` of an HxW map: H*W)."""
    import keras

    found = []
    for bn in model.layers:
        if not isinstance(bn, keras.layers.BatchNormalization) or bn.axis not in (-1, 3):
            continue
        relu = _only_consumer(bn, model)
        if not _plain_relu(relu) or len(bn.get_weights()) != 4:
            continue
        layer = _only_consumer(relu, model)
        while isinstance(layer, (keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D,
                                 keras.layers.Flatten)):
            layer = _only_consumer(layer, model)
        if isinstance(layer, keras.layers.Dense) and layer.kernel.shape[0] % bn.input.shape[-1] == 0:
            found.append((bn, layer, layer.kernel.shape[0] // bn.input.shape[-1]))
    return found


def fold_bn_into_dense(model, log: Callable[[str], None] | None = None):
    """``model`` with each ``BatchNormalization -> ReLU -> (pools, Flatten) -> Dense``
    (:func:`_bn_relu_dense`) whose scales ``a = gamma / sqrt(var + eps)`` are all > 0 turned into
    ``x + shift -> ReLU -> ... -> Dense`` with the kernel's rows multiplied by ``a``.

    Exact in float: ``relu(a * x + b) = a * relu(x + b / a)`` for ``a > 0``, and pools and Flatten
    are linear per channel. In int8 the per-tensor output of the normalization no longer squeezes
    the channels of small ``a`` into a few steps (their rounding, amplified by large Dense weights,
    biased the pooled model's logits); the add stays in the units of the residual sum it follows.
    """
    import keras
    import numpy as np

    shifts, kernels = {}, {}
    for bn, dense, rows in _bn_relu_dense(model):
        scale, beta, mean = _bn_affine(bn)
        if not (scale > 0).all():
            if log:
                log(f"{bn.name} not folded into {dense.name}: {int((scale <= 0).sum())} of {scale.size} "
                    "channels have a scale <= 0")
            continue
        shifts[bn.name] = (beta / scale - mean).astype(np.float32)
        kernel, *bias = dense.get_weights()
        kernels[dense.name] = [(kernel * np.tile(scale, rows)[:, None]).astype(np.float32), *bias]
        if log:
            log(f"{bn.name} folded into {dense.name} through the ReLU "
                f"(scales {scale.min():.3g}-{scale.max():.3g}, all > 0: exact)")
    if not shifts:
        return model

    def call(layer, *args, **kwargs):
        if layer.name not in shifts:
            return layer(*args, **kwargs)
        shift = shifts[layer.name]
        return keras.layers.Lambda(lambda t: t + shift, name=f"{layer.name}_shift")(args[0])

    return _rebuild(model, kernels, call)


def export_graph(model, log: Callable[[str], None] | None = None) -> tuple[object, str | None]:
    """The graph every format is exported from: input rescaling folded (:func:`fold_input_rescaling`)
    and cut at the logits (:func:`logits_model`), with the activation the device applies.

    A model with a batch normalization after a max pool (the pooled recipes) also gets the folds its
    int8 needs, each telling ``log`` what it did: that normalization into the conv before the pool
    (:func:`fold_bn_before_pool`), the last one into the Dense (:func:`fold_bn_into_dense`) and one
    feeding a conv into that conv (:func:`fold_bn_into_next_conv`). Other models keep the graph
    without them: the shipped default re-exported with them lost int8 accuracy (TFLite agreement
    99.66% -> 99.48%, accuracy drop 0.11 -> 0.29 points; ONNX int8 failed its bound by 0.02 points),
    and the site adaptations measured so far rest on that graph."""
    graph = fold_input_rescaling(model)
    if _conv_pool_bn(graph):
        graph = fold_bn_into_dense(fold_bn_before_pool(graph, log), log)
        graph = fold_bn_into_next_conv(graph, log)
    return logits_model(graph)
