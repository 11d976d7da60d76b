"""Deprecated: use :mod:`mlipuq.active.cli` (the ``mlipuq select`` subcommand).

Re-exports ``add_parser`` and ``run`` for one release and warns on import.
"""

import warnings

from mlipuq.active.cli import add_parser, run

warnings.warn(
    "mlipuq.active_cli is deprecated and will be removed in the next release; "
    "import mlipuq.active.cli instead",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["add_parser", "run"]
