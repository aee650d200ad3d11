"""The HTTP server's and logging flags of the launcher table (``fields.py`` joins them in)."""

from __future__ import annotations

from tgi_core.settings.kinds import (
    FLAG,
    NON_NEGATIVE_INT,
    PORT,
    POSITIVE_INT,
    TEXT,
    TEXT_LIST,
    choice,
)
from tgi_core.settings.spec import SERVER, Spec, moot, refused

__all__ = ["SERVER_FIELDS"]

_NO_NGROK = "not supported by this server (no ngrok tunnel)"

SERVER_FIELDS: tuple[Spec, ...] = (
    Spec(
        "hostname",
        SERVER,
        TEXT,
        "0.0.0.0",
        "The IP address to listen on; anything but an IP address means 0.0.0.0.",
    ),
    Spec("port", SERVER, PORT, 3000, "The port to listen on.", short="p", to=("server",)),
    Spec("prometheus_port", SERVER, PORT, 9000, "The port of the /metrics server.", to=("server",)),
    Spec("workers", SERVER, POSITIVE_INT, 1, "Gunicorn HTTP worker processes.", to=("server",)),
    Spec(
        "api_key",
        SERVER,
        TEXT,
        None,
        "Require this bearer token on every request.",
        secret=True,
        to=("server",),
    ),
    Spec(
        "cors_allow_origin",
        SERVER,
        TEXT_LIST,
        (),
        "Allowed CORS origins; repeat the flag (the env var takes a comma list).",
        repeatable=True,
        to=("server",),
    ),
    Spec("json_output", SERVER, FLAG, False, "Log in JSON (for telemetry).", to=("server",)),
    Spec(
        "graceful_termination_timeout",
        SERVER,
        NON_NEGATIVE_INT,
        90,
        "Seconds to wait for in-flight requests on shutdown.",
        short="g",
        to=("server",),
    ),
    Spec(
        "otlp_endpoint",
        SERVER,
        TEXT,
        None,
        "OpenTelemetry collector endpoint: traces go there over OTLP/HTTP (`/v1/traces` is "
        "appended to a bare URL such as http://collector:4318).",
        to=("server",),
    ),
    Spec(
        "otlp_service_name",
        SERVER,
        TEXT,
        "text-generation-inference.router",
        "OpenTelemetry service name (the traces' `service.name`).",
        to=("server",),
    ),
    Spec("ngrok", SERVER, FLAG, False, "Enable ngrok tunneling.", status=refused(_NO_NGROK)),
    Spec(
        "ngrok_authtoken",
        SERVER,
        TEXT,
        None,
        "ngrok authentication token.",
        secret=True,
        status=refused(_NO_NGROK),
    ),
    Spec("ngrok_edge", SERVER, TEXT, None, "ngrok edge.", status=refused(_NO_NGROK)),
    Spec(
        "usage_stats",
        SERVER,
        choice("on", "off", "no-stack"),
        "on",
        "Anonymous usage statistics.",
        status=moot("this server never sends usage statistics, whatever the value"),
    ),
    Spec(
        "env", SERVER, FLAG, False, "Print the runtime environment at start-up.", short="e", envs=()
    ),
)
