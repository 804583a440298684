"""Landmark Breaker plugin: the AVS-SAN landmark extractor (SAN's ITN-CPM, WFLW 98 points).

Importing this package is cheap; the network and the extractor live in
:mod:`lb_avssan.model` and :mod:`lb_avssan.extractor` and load torch when imported.
"""

__version__ = "0.1.0"
