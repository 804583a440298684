"""Landmark Breaker plugin: face-api.js's 68-point landmark networks (full and tiny) as
differentiable torch extractors, read from their TensorFlow.js weight files.

Importing this package does not import torch; :mod:`lb_faceapi.plugin` registers the extractors.
"""
