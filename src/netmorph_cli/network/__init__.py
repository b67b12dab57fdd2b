"""Networks as data: node attributes and the op table, typed history records, the
description and its generic module (``description``), FLOPs, the architecture registry and
zoo, the paper's presets. May import: ``spec`` (presets' module graphs).
"""

from ..base.compat import old_module_names

__getattr__ = old_module_names(__name__, "description")
