"""Library loggers silenced for a block of code, restored afterwards (whatever the block raises)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["LIGHTNING_LOGGERS", "quiet_loggers"]

# Lightning logs its info lines (seed, accelerators, "Restoring states ...") under these names.
LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric")


@contextmanager
def quiet_loggers(names: tuple[str, ...], level: int = logging.WARNING) -> Iterator[None]:
    """Raise the named loggers (``""``: the root logger) to ``level`` inside the block."""
    loggers = [logging.getLogger(name or None) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, levels):
            logger.setLevel(old)
