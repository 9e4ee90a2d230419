"""Capture one logger's records whatever Airflow's logging set-up did to it before."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def log_messages(logger_name: str, level: int = logging.INFO) -> Iterator[list[str]]:
    """Messages of one logger and its children, through a handler of our own: capfd misses stdlib records
    whose handler was bound to another test's capture stream, and caplog's handler is dropped when Airflow
    configures logging."""
    messages: list[str] = []
    handler = logging.Handler(level)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger(logger_name)
    # dictConfig(disable_existing_loggers=True) disables the logger and each child that existed: enable them all.
    family = [logger] + [
        child
        for name, child in logging.root.manager.loggerDict.items()
        if name.startswith(logger_name + ".") and isinstance(child, logging.Logger)
    ]
    saved = [(member, member.disabled) for member in family]
    saved_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    for member in family:
        member.disabled = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)
        for member, disabled in saved:
            member.disabled = disabled
