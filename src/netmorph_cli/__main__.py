"""``python -m netmorph_cli`` (what ``torchrun … -m netmorph_cli train …`` runs)."""

from .cli import main

main()
