"""Cut a Keras classifier before its final softmax/sigmoid: every exported format ends at the logits.

An int8 output has 256 steps; holding probabilities it stops at 255/256 = 0.996, so a band edge
chosen on Keras at 0.999 is never reached and the top step mixes hundreds of validation crops of
both classes. Holding logits, the device applies the activation in float after dequantizing
(``edgekit.device.activation``) and keeps the model's full range. One graph for every format (one
code path); the manifest records ``output: logits`` and the activation per artifact. A model that
does not end in a recognisable softmax or sigmoid is exported as it is (``output: probabilities``).
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
