"""The one exception hierarchy of netmorph.

The library raises these; only ``cli.py`` turns them into an ``Error: …`` line and an exit
code. ``exit_code`` follows the CLI contract: 2 for bad input or usage, 1 for a failed check
or a runtime failure.

Every exception a caller of the library can receive is defined here. Three more live beside
the code that raises and catches them, as control flow that never reaches a caller in their
own form:

- ``budget.OutOfTime`` (a ``SolverError``): the solve's time budget ran out; raised deep in
  the solver, turned by ``solve.morph_filter`` into ``SolverTimeout`` with what was reached.
- ``feasibility.Narrow`` (an ``InfeasibleError``): too narrow, with *unverified* candidate
  widenings (``feasibility.Widening`` records, hence defined there); ``morph_filter``
  re-solves at them and raises ``InfeasibleError`` with verified advice only.
- ``limits.JSONDepthError`` (a ``ValueError``): nesting too deep for ``parse_json``;
  ``spec.py`` and ``checkpoint.py`` turn it into ``SpecError`` / ``CheckpointError``.
"""

from __future__ import annotations


class NetmorphError(Exception):
    """Base class of every error netmorph raises on purpose."""

    exit_code = 1


class SpecError(NetmorphError):
    """A module spec that cannot be parsed or is not a valid module."""

    exit_code = 2


class SolverError(NetmorphError):
    """The morphism equation could not be solved to the requested tolerance."""

    exit_code = 1


class SolverTimeout(SolverError):
    """A solve stopped by its time limit (``max_seconds``)."""


class InfeasibleError(SolverError):
    """The requested shapes cannot satisfy the morphism equation; says what to widen."""


class NetworkError(NetmorphError):
    """An invalid network description or an unknown layer."""

    exit_code = 2


class CheckpointError(NetmorphError):
    """A checkpoint that is missing, corrupt, foreign or unsafe."""

    exit_code = 2


class MorphError(NetmorphError):
    """A morph that cannot be applied where it was asked for."""

    exit_code = 2


class VerificationError(NetmorphError):
    """Parent and child cannot be compared (not a parent/child pair)."""

    exit_code = 2


class DataError(NetmorphError):
    """A data set that cannot be found or read."""

    exit_code = 2


class TrainingError(NetmorphError):
    """Training failed at run time (for example a non-finite loss)."""

    exit_code = 1


class OutputError(NetmorphError):
    """An output path refused by the write policy (an input, an existing file, no directory)."""

    exit_code = 2


class WriteError(NetmorphError):
    """The operating system failed a write (read-only, permission, full disk)."""

    exit_code = 1


class UsageError(NetmorphError):
    """A bad option value that the library itself detects."""

    exit_code = 2


class ResourceLimitError(NetmorphError):
    """A solve or morph that would need more memory than allowed (checked before any
    allocation). Exit code 2: the request, not the solver, is at fault."""

    exit_code = 2
