"""lb-onnx: any ONNX landmark network as a differentiable Landmark Breaker extractor.

Importing this package is cheap (no torch): descriptions live in :mod:`lb_onnx.description`,
the converter in :mod:`lb_onnx.convert`, the extractor in :mod:`lb_onnx.extractor`, MTCNN's
ONet in :mod:`lb_onnx.mtcnn`, the registration in :mod:`lb_onnx.plugin`.
"""

__version__ = "0.1.0"
