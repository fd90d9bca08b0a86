"""Export a Keras classifier to TFLite (fp32, fp16, dynamic, int8) and ONNX (fp32, int8), validated
against Keras, into one bundle. ``from edgekit.export import export_bundle, ExportOptions, Format``."""

from __future__ import annotations

from edgekit.export.options import ALL_FORMATS, Bounds, ExportOptions, Format

__all__ = ["ALL_FORMATS", "Bounds", "ExportOptions", "Format", "export_bundle"]


def __getattr__(name: str):
    if name == "export_bundle":  # lazily: the CLI imports this package just to register `export`
        from edgekit.export.bundle import export_bundle

        return export_bundle
    raise AttributeError(name)
