"""lb-mediapipe: MediaPipe Face Mesh and BlazeFace as lbcore components, rebuilt in torch from
MediaPipe's TFLite files so the attack can differentiate through them.

Importing this package is cheap (no torch): the TFLite-to-torch loader lives in
:mod:`lb_mediapipe.tflite_torch`, the extractor in :mod:`lb_mediapipe.extractor`, the detector in
:mod:`lb_mediapipe.detector`, the registration in :mod:`lb_mediapipe.plugin`, and the setup step
that unpacks the model files from the mediapipe wheel in :mod:`lb_mediapipe.fetch`.
"""

__version__ = "0.1.0"
