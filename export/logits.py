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
"""

from __future__ import annotations

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


def export_graph(model) -> tuple[object, str | None]:
    """The graph every format is exported from: input rescaling folded (:func:`fold_input_rescaling`),
    cut at the logits (:func:`logits_model`); with the activation the device applies."""
    return logits_model(fold_input_rescaling(model))
