"""Library chatter as debug logs. Exporting and quantising a model, or reading a damaged PDF, makes torch,
transformers, ONNX Runtime and pypdf print tracer warnings, loading bars, raw parser errors and advice with URLs
that mean nothing to a user and hide the one line that does. Inside `library_output_as_debug()` Python warnings,
records logged straight on the root logger (ONNX Runtime's quantiser does that) and records of the named library
loggers go to the "crossrank.library" logger at DEBUG level, and transformers' progress bars are off (when
transformers is loaded). `CROSSRANK_LOG_LEVEL=debug` shows them again."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator

log = logging.getLogger("crossrank.library")


def _as_debug(record: logging.LogRecord) -> bool:
    log.debug("%s: %s: %s", record.name, record.levelname.lower(), record.getMessage())
    return False


class _ForwardAsDebug(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _as_debug(record)


@contextlib.contextmanager
def library_output_as_debug(*loggers: str) -> Iterator[None]:
    """`loggers`: library loggers to divert with their children (e.g. "pypdf"), besides the root logger."""
    root, forward = logging.getLogger(), _ForwardAsDebug()
    root.addFilter(_as_debug)  # a logger's filters see the records logged on it, not its children's
    # `logging.warning()` installs a stderr handler on a root without one; a placeholder keeps it from doing so.
    placeholder = logging.NullHandler() if not root.handlers else None
    if placeholder is not None:
        root.addHandler(placeholder)
    diverted = [(logger, logger.handlers, logger.propagate) for logger in map(logging.getLogger, loggers)]
    for logger, _, _ in diverted:
        logger.handlers, logger.propagate = [forward], False
    transformers_logging = sys.modules.get("transformers.utils.logging")
    bars_were_on = transformers_logging is not None and transformers_logging.is_progress_bar_enabled()
    if bars_were_on:
        transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for warning in caught:
            log.debug("%s: %s (%s:%s)", warning.category.__name__, warning.message, warning.filename, warning.lineno)
    finally:
        root.removeFilter(_as_debug)
        if placeholder is not None:
            root.removeHandler(placeholder)
        for logger, handlers, propagate in diverted:
            logger.handlers, logger.propagate = handlers, propagate
        if bars_were_on:
            transformers_logging.enable_progress_bar()
