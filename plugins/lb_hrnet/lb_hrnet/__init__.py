"""HRNetV2-W18 facial landmark extractor (WFLW, 98 points) for Landmark Breaker.

Importing this package is cheap; the network (:mod:`lb_hrnet.model`) and the extractor
(:mod:`lb_hrnet.extractor`) import torch and are loaded by the plugin's factory on first use.
"""

__version__ = "0.1.0"
