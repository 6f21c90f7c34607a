"""Prefect's run loggers, cut to one line per failure for command-line users.

When a flow run fails, Prefect logs the task's and the flow's exception with its whole traceback
(and Icechunk's errors carry dozens of lines of Rust context). On the command line the same error
reaches `tmkt`'s own handler, which prints it as one line for a user's mistake (a full disk, a
missing folder) and re-raises it, traceback and all, for a bug. So Prefect's copies add nothing
but noise; the flow run's state on the server keeps the full text.
"""

from __future__ import annotations

import logging


class FirstLineOnly(logging.Filter):
    """Keep a record's first line and drop its traceback, whatever its level: Prefect logs a failed
    flow run's final state, with the exception's text, at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        # failed states quote the exception's repr, whose newlines are escaped: cut there too
        first = message.splitlines()[0].split("\\n")[0] if message else message
        record.msg, record.args = first, None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def one_line_run_failures() -> None:
    """Attach `FirstLineOnly` to every handler of Prefect's loggers (after Prefect set them up)."""
    names = [name for name in logging.Logger.manager.loggerDict if name.startswith("prefect")]
    for logger in [logging.getLogger(), *map(logging.getLogger, names)]:
        for handler in logger.handlers:
            if not any(isinstance(f, FirstLineOnly) for f in handler.filters):
                handler.addFilter(FirstLineOnly())
