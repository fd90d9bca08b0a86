"""A freshly converted tiny bundle (needs TensorFlow): the device runtime agrees with Keras."""

from __future__ import annotations

import numpy as np
import pytest
from device_helpers import CELLS

pytest.importorskip("tensorflow")


def test_runtime_matches_keras_on_a_fresh_bundle(tmp_path):
    import keras
    from bundle_factory import make_bundle, tiny_model

    from edgekit.device.preprocess import load_for_model
    from edgekit.device.runtime import load_classifier

    manifest = make_bundle(tmp_path / "b", seed=3)
    assert set(manifest.artifacts) == {"tflite_fp32", "tflite_int8"}
    assert manifest.artifacts["tflite_int8"].inputs[0].dtype == "uint8"
    batch = np.stack([load_for_model(p, manifest.preprocessing) for p in sorted(CELLS.iterdir())])
    reference = tiny_model(seed=3).predict(batch.astype(np.float32), verbose=0)
    keras.backend.clear_session()
    fp32 = load_classifier(tmp_path / "b", "tflite_fp32").predict(batch)
    np.testing.assert_allclose(fp32, reference, atol=1e-5)
    int8 = load_classifier(tmp_path / "b").predict(batch)  # the default: int8, raw uint8 pixels in
    assert np.abs(int8 - reference).max() < 0.05
