"""The command line: click commands (``commands``; ``main`` is the console script) and rich
renderings (``report``), the only code that prints. May import: everything.
"""

from .commands import main

__all__ = ["main"]
