"""Training and results: the data-set registry and readers (``data``), evaluation,
recipes, what a morph added (``growth``), run files, the train loop, results.
May import: everything above but ``cli``.
"""
