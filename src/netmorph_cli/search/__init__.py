"""Architecture search by hill climbing over exact morphs: the space, the validation split,
the run directory (``rundir``), the climb (``climb``) and its report (``report``).
May import: everything but ``cli``.
"""
