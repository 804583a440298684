"""lb-example-regressor: a worked example of a third-party Landmark Breaker plugin.

``example-regressor`` is a small convolutional network that regresses the 68 iBUG landmark
coordinates of a face crop (no heat-maps inside); it renders Gaussian heat-maps from its
coordinates differentiably so that the paper's Eq. 1 (``heatmap-cosine``) applies to it too.
``example-nme`` is an attack loss: minus the landmark displacement normalised by the face size.

Importing this package does not import torch; :mod:`lb_example_regressor.model` does.
"""

__version__ = "0.1.0"
