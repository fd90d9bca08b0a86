# pyright: basic
"""edgekit: train, quantize and run compact image classifiers on field devices.

This module stays light: importing ``edgekit.device`` runs it first, and the device path must
never load TensorFlow.
"""

__version__ = "0.1.0"
