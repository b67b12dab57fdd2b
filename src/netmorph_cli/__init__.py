"""netmorph: modular network morphism (Wei, Wang & Chen) for PyTorch."""

__version__ = "0.1.0"
