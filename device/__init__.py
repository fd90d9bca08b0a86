# pyright: basic
"""The light on-device runtime (numpy, OpenCV, LiteRT / onnxruntime). Never imports TensorFlow."""
