"""Morphing a network: the insertion engine, the morphs (``morphs``: where a module goes),
BN calibration and verification. May import: ``solver``, ``network``, ``spec``; not ``io``
(files are the caller's).
"""

from ..base.compat import old_module_names

__getattr__ = old_module_names(__name__, "morphs")
