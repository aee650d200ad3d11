"""Log records as TGI writes them: a compact text line, or one JSON object per line.

``configure_logging(level, json_output=...)`` sets up this process (the launcher);
``logging_config(level, json_output=...)`` is the same setup as a ``logging.config``
dictionary, which Gunicorn applies in its master and workers (``logconfig_dict``), so every
line the service prints has one shape. Records go to stdout, as TGI's do.

The text line follows tracing's compact format::

    2024-05-22T19:31:48.302239Z  INFO tgi_server.launcher: Connected

and ``--json-output`` follows tracing's JSON format, one object per record::

    {"timestamp":"2024-05-22T19:31:48.302239Z","level":"INFO","fields":{"message":"Connected"},"target":"tgi_server.launcher"}

``LOG_LEVEL`` (``trace|debug|info|warn|error|critical``) sets the level of our packages (and
of Gunicorn's and uvicorn's server logs). As TGI's filter does, ``debug`` leaves the other
libraries at ``info``; ``trace`` turns on debug for everything.
"""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "OUR_LOGGERS",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "logging_config",
    "python_level",
]

OUR_LOGGERS = (
    "tgi_core",
    "tgi_scheduler",
    "tgi_hpu_kernels",
    "tgi_vlm",
    "tgi_server",
    "gunicorn.error",
    "uvicorn.error",
)
"""Loggers that ``LOG_LEVEL`` sets exactly (the rest stay at ``info`` unless ``trace``)."""

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# tracing's level names: it has WARN and no CRITICAL.
_TRACING_NAMES = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARN",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "ERROR",
}


def python_level(log_level: str) -> int:
    """The ``logging`` level of a ``LOG_LEVEL`` value (``trace`` is ``DEBUG``).

    Raises:
        ValueError: not one of TGI's level names.
    """
    try:
        return _LEVELS[log_level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {log_level!r}") from None


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _level_name(record: logging.LogRecord) -> str:
    return _TRACING_NAMES.get(record.levelno, record.levelname)


class TextFormatter(logging.Formatter):
    """``<timestamp> <LEVEL> <logger>: <message>``, tracing's compact line."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {_level_name(record):>5} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``timestamp``, ``level``, ``fields``, ``target``.

    ``fields`` holds the message, the formatted exception when there is one, and any
    mapping passed as ``extra={"fields": {...}}``.
    """

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {"message": record.getMessage()}
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            fields.update(extra)
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        document = {
            "timestamp": _timestamp(record),
            "level": _level_name(record),
            "fields": fields,
            "target": record.name,
        }
        return json.dumps(document, ensure_ascii=False, separators=(",", ":"), default=str)


def logging_config(log_level: str, *, json_output: bool) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of a service process (also Gunicorn's
    ``logconfig_dict``): one stdout handler, our formatter, ``LOG_LEVEL`` applied."""
    level = python_level(log_level)
    formatter = JsonFormatter if json_output else TextFormatter
    # Other libraries stay at info under "debug" (their debug output drowns ours), as
    # TGI's filter keeps debug to its own crates; "trace" opens everything.
    others = logging.DEBUG if log_level.lower() == "trace" else max(level, logging.INFO)
    ours = {"level": logging.getLevelName(level), "handlers": ["stdout"], "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"tgi": {"()": f"{__name__}.{formatter.__name__}"}},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "formatter": "tgi",
                "stream": "ext://sys.stdout",
            }
        },
        "root": {"level": logging.getLevelName(others), "handlers": ["stdout"]},
        "loggers": {
            **{name: dict(ours) for name in OUR_LOGGERS},
            # No access log (TGI has none); Gunicorn and uvicorn keep their own loggers.
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
            "uvicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
        },
    }


def configure_logging(log_level: str, *, json_output: bool) -> None:
    """Set up this process's logging (see ``logging_config``); replaces any handlers.

    Raises:
        ValueError: ``log_level`` is not one of TGI's level names.
    """
    logging.config.dictConfig(logging_config(log_level, json_output=json_output))
