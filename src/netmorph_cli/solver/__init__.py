"""The filter solver: seeded draws (``rng``), time/memory budgets, the module function
(``algebra``), least squares, feasibility, widths, TYPE-I/II splits, Algorithm 2 (``sweeps``),
the entry point (``solve``) and grouped convs (``groups``). May import: ``spec``.
"""

# how ``solve.morph_filter`` solves (the one list: the API, ``reduce --method`` and the
# solver read it here, torch-free, so the CLI starts without torch)
METHODS = ("auto", "algorithm2", "reduce")
