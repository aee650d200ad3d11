"""Every refused setting, given a value other than its default, stops the real launcher with
one line on stderr and exit status 2, as clap does; the default itself is accepted (and then
the busy metrics port stops it, before any model loads)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tgi_core.settings import FIELDS, Settings, Spec

pytestmark = pytest.mark.e2e

LAUNCHER = str(Path(sys.executable).with_name("text-generation-launcher"))
DEFAULTS = Settings.from_sources([], {})
REFUSED = [spec for spec in FIELDS if spec.status.kind == "refused"]
# A non-default value for each refused setting, as a user would type it.
VALUES = {"speculate": "2", "otlp_service_name": "mine"}
# --ngrok alone is TGI's own error first: it needs its token and edge.
EXTRA = {"ngrok": {"NGROK_AUTHTOKEN": "token", "NGROK_EDGE": "edge"}}


def run(argv: list[str], environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The launcher in this environment, every setting at its default but for ``environ``."""
    return subprocess.run(
        [LAUNCHER, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=DEFAULTS.child_environ(environ),
    )


@pytest.mark.parametrize("spec", REFUSED, ids=lambda spec: spec.name)
def test_a_refused_value_exits_2_with_one_line(spec: Spec) -> None:
    value = VALUES.get(spec.name, "x")
    argv = [spec.long] if not spec.kind.takes_value else [spec.long, value]
    assert argv[0] is not None
    done = run(argv, EXTRA.get(spec.name, {}))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"error: the argument '{spec.display}' is refused: {spec.status.reason}\n"
    variable = spec.env_names[0]
    by_env = run(
        [], {**EXTRA.get(spec.name, {}), variable: "true" if argv == [spec.long] else value}
    )
    assert by_env.returncode == 2
    assert by_env.stderr.splitlines() == [
        f"error: the argument '{spec.display}' (from environment variable {variable}) "
        f"is refused: {spec.status.reason}"
    ]


def test_defaults_of_refused_settings_are_accepted() -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run(
            ["--prometheus-port", str(port)],
            {"OTLP_SERVICE_NAME": "text-generation-inference.router", "TRUST_REMOTE_CODE": "false"},
        )
    assert done.returncode == 1  # past the settings: the busy port stops it
    assert "refused" not in done.stderr
