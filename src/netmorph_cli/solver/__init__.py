"""The filter solver: seeded draws (``rng``), time/memory budgets, the module function
(``algebra``), least squares, feasibility, widths, TYPE-I/II splits, Algorithm 2 (``sweeps``),
the entry point (``solve``) and grouped convs (``groups``). May import: ``spec``.
"""
