"""lb-fan: the FAN landmark extractor (Bulat & Tzimiropoulos, ICCV 2017) as an lbcore plugin.

Importing this package is cheap (no torch): the network lives in :mod:`lb_fan.model`, the
extractor in :mod:`lb_fan.extractor`, the registration in :mod:`lb_fan.plugin`.
"""

__version__ = "0.1.0"
