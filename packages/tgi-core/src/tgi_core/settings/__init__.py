"""Configuration: argv + environ -> one validated, frozen ``Settings`` -> per-component slices.

This package is the only code in the repository that reads the environment. Typical use::

    try:
        settings = Settings.from_process()
    except HelpRequested as request:
        print(render_help() if request.kind == "help" else version)
    except SettingsError as error:
        sys.exit(f"error: {error}")
    engine = Engine(settings.scheduler(), Runner(settings.runner(rank=0)))

The launcher's children (engine, Gunicorn workers) call ``Settings.from_parent()`` instead: it
decodes what the launcher resolved (``child_environ``). Tests build slices
(``SchedulerSettings(...)``) or call ``Settings.from_sources(argv, {})``.
"""

from tgi_core.settings.errors import HelpRequested, SettingsError
from tgi_core.settings.fields import FIELDS
from tgi_core.settings.help import render_help
from tgi_core.settings.model import SETTINGS_VARIABLE, Settings
from tgi_core.settings.resolve import HostInfo
from tgi_core.settings.slices import (
    DeviceName,
    DType,
    ProfileSettings,
    QueuePolicy,
    RunnerSettings,
    SchedulerSettings,
    ServerSettings,
    ValidationLimits,
)
from tgi_core.settings.spec import SECTIONS, Spec

__all__ = [
    "FIELDS",
    "SECTIONS",
    "SETTINGS_VARIABLE",
    "DType",
    "DeviceName",
    "HelpRequested",
    "HostInfo",
    "ProfileSettings",
    "QueuePolicy",
    "RunnerSettings",
    "SchedulerSettings",
    "ServerSettings",
    "Settings",
    "SettingsError",
    "Spec",
    "ValidationLimits",
    "render_help",
]
