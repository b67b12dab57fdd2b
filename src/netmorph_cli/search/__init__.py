"""Architecture search over exact morphs (issue 21): the search space (``space``) so far.
May import: everything but ``cli``.
"""
