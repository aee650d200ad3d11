"""``Spec``: the description of one setting, and the sections that group them.

The table itself is in ``fields.py`` (flags) and ``env_fields.py`` (environment-only
variables); nothing here knows a particular setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tgi_core.settings.kinds import Kind

__all__ = [
    "BATCHING",
    "GAUDI",
    "HARDWARE",
    "LIMITS",
    "MODEL",
    "PROFILING",
    "SECTIONS",
    "SERVER",
    "WORKS",
    "Spec",
    "Status",
    "moot",
    "refused",
]


@dataclass(frozen=True, slots=True)
class Status:
    """Whether a setting does what its help says, so that no accepted flag is silently ignored.

    ``works``: it does. ``refused``: only its default is accepted; any other value stops
    start-up (exit 2) with ``reason``. ``moot``: every value is accepted and none has
    anything to change here, for ``reason``.
    """

    kind: Literal["works", "refused", "moot"] = "works"
    reason: str = ""

    @property
    def note(self) -> str:
        """What ``--help`` and the docs show ("" when it works)."""
        if self.kind == "refused":
            return f"refused: {self.reason}"
        if self.kind == "moot":
            return f"no effect: {self.reason}"
        return ""


WORKS = Status()


def refused(reason: str) -> Status:
    """A setting accepted only at its default; ``reason`` says why, in a user's words."""
    return Status("refused", reason)


def moot(reason: str) -> Status:
    """A setting accepted with any value, none of which changes anything, for ``reason``."""
    return Status("moot", reason)


@dataclass(frozen=True, slots=True)
class Spec:
    """One setting. ``flag=False`` makes it environment-only (the Gaudi variables).

    ``to`` names the slices that receive the value as it is (``Settings`` builds them from
    it): ``scheduler``, ``runner``, ``server``, ``limits``, ``images`` or ``profile``, the
    slice's field named as the setting unless the entry says otherwise
    (``"runner.memory_fraction"``). What a slice computes from several settings is
    ``Settings``' own business (``model.py``).
    """

    name: str
    section: str
    kind: Kind
    default: object
    help: str
    flag: bool = True
    short: str | None = None
    envs: tuple[str, ...] | None = None
    repeatable: bool = False
    default_doc: str | None = None
    secret: bool = False
    stored: bool = True  # False: read, then folded into another setting (legacy alias)
    # A library in the launcher's children reads the variable itself (huggingface_hub,
    # prometheus-client): they get it too, resolved, next to the encoded settings.
    exported: bool = False
    status: Status = WORKS
    to: tuple[str, ...] = ()

    @property
    def targets(self) -> tuple[tuple[str, str], ...]:
        """``(slice, field)`` for each entry of ``to``."""
        entries = (entry.partition(".") for entry in self.to)
        return tuple((target, field or self.name) for target, _, field in entries)

    @property
    def long(self) -> str | None:
        return "--" + self.name.replace("_", "-") if self.flag else None

    @property
    def env_names(self) -> tuple[str, ...]:
        return self.envs if self.envs is not None else (self.name.upper(),)

    @property
    def display(self) -> str:
        """clap's name of the argument: ``--port <PORT>``, ``--json-output`` or ``BLOCK_SIZE``."""
        if self.long is None:
            return self.env_names[0]
        if not self.kind.takes_value:
            return self.long
        return f"{self.long} <{self.name.upper()}>"

    @property
    def default_text(self) -> str:
        """The default as the docs and ``--help`` show it ("" when there is none)."""
        if self.default_doc is not None:
            return self.default_doc
        if self.default is None:
            return ""
        return self.kind.format(self.default)


MODEL = "Model"
HARDWARE = "Hardware and sharding"
LIMITS = "Request limits"
BATCHING = "Batching and scheduling"
GAUDI = "Gaudi buckets and graphs"
PROFILING = "Profiling"
SERVER = "HTTP server and logging"
SECTIONS = (MODEL, HARDWARE, LIMITS, BATCHING, GAUDI, PROFILING, SERVER)
