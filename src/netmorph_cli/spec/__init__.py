"""Module specs: the module DAG (``graph``), spec files (``parse``) and Algorithm 1's
reduction (``reduce``). Pure: no torch I/O, no printing.
May import: ``errors``, ``limits``.
"""

from ..base.compat import old_module_names

__getattr__ = old_module_names(__name__, "parse")
