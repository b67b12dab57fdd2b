"""Architecture search over exact morphs (issue 21): so far the search space
(``space``) and the validation split (``validation``). May import: everything but ``cli``.
"""
