# pyright: basic
"""An artifact's outputs -> class probabilities, as its manifest entry says (``output``, ``activation``).

Quantized formats end at the logits (the input of the model's final softmax or sigmoid): an int8
probability has 256 steps and stops at 255/256, so no cell could be called above 0.996; an int8
logit keeps the model's full confidence once the activation is applied here, in float, after
dequantizing. Artifacts without the field (old bundles, imported models) output probabilities and
pass through unchanged. Light: numpy only.
"""

from __future__ import annotations

import numpy as np

from edgekit.errors import BundleError


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: the row maximum is subtracted), returned as float32."""
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Element-wise logistic function in float64, returned as float32."""
    z = np.asarray(z, np.float64)
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # no overflow for large |z|


ACTIVATIONS = {"softmax": softmax, "sigmoid": sigmoid}
PROBABILITY_SLACK = 1e-3  # how far outside [0, 1] a float model's rounding may put a probability


def improbable_rows(p: np.ndarray) -> np.ndarray:
    """Which rows of ``p`` hold a value that is no probability: NaN, infinite, or outside [0, 1]."""
    p = np.asarray(p, np.float64).reshape(len(p), -1)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(p) | (p < -PROBABILITY_SLACK) | (p > 1 + PROBABILITY_SLACK)
    return np.asarray(bad.any(axis=1), bool)


def to_probabilities(y: np.ndarray, output: str = "probabilities",
                     activation: str | None = None) -> np.ndarray:
    """Dequantized model outputs -> probabilities: the named activation for ``output == "logits"``,
    unchanged for ``"probabilities"``."""
    if output == "probabilities":
        return y
    if output != "logits" or activation not in ACTIVATIONS:
        raise BundleError(f"cannot turn output {output!r} with activation {activation!r} into probabilities")
    return ACTIVATIONS[activation](y)


def probability_step(output: str, activation: str | None, scale: float | None) -> float:
    """The most one quantization step of the output tensor (``scale``) moves a probability: the step
    itself for probabilities; for logits a step in each of two logits moves their difference by at
    most ``2 * scale``, and a softmax or sigmoid moves by at most 1/4 of that (``p (1 - p) <= 1/4``).
    0 for a float output."""
    if not scale:
        return 0.0
    return float(scale) if output == "probabilities" else float(scale) / 2


def output_step(artifact) -> float:
    """:func:`probability_step` of an artifact (:class:`edgekit.manifest.Artifact`): the scale of its
    output tensor, or the one export recorded for a graph that dequantizes its output inside
    (ONNX QDQ, ``validation.output_scale``); 0 when neither is known."""
    scale = artifact.outputs[0].scale if artifact.outputs else None
    scale = scale or artifact.validation.get("output_scale")
    return probability_step(artifact.output, artifact.activation, scale)
