"""Every setting is read, or refused: no flag or variable we accept is silently ignored.

A setting that works must change a slice (what the scheduler, runner or server receive) or
be read as ``settings.<name>`` outside ``tgi_core.settings`` (the launcher); every slice
attribute must be read somewhere in the packages. A refused setting is accepted at its
default and stops start-up with one line otherwise. ``tests/e2e/test_launcher_refused.py``
checks the same through the real launcher.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tgi_core.api import GenerateParameters, GenerateRequest
from tgi_core.settings import (
    FIELDS,
    HostInfo,
    ProfileSettings,
    RunnerSettings,
    SchedulerSettings,
    ServerSettings,
    Settings,
    SettingsError,
    Spec,
    ValidationLimits,
    render_help,
)
from tgi_core.settings.kinds import BOOL, FLAG, INT_LIST, TEXT, TEXT_LIST
from tgi_core.settings.slices import ImageLimits
from tgi_core.settings_docs import render_markdown
from tgi_core.testing import ByteEncoder
from tgi_core.validation import validate_generate

PACKAGES = Path(__file__).resolve().parents[2]
SETTINGS_PACKAGE = PACKAGES / "tgi-core" / "src" / "tgi_core" / "settings"
HOST = HostInfo(habana_available=False, embedded_model=None)
SLICES = (SchedulerSettings, RunnerSettings, ServerSettings, ValidationLimits, ImageLimits)
SLICES += (ProfileSettings,)
# Values a generic rule gets wrong: a hostname that is not an IP binds 0.0.0.0 anyway.
EXAMPLES = {
    "hostname": "127.0.0.1",
    "rope_factor": "2.0",
    "sharded": "false",
    "cuda_graphs": "0",
    "otlp_service_name": "my-service",
}
# The environment an example is set in: --sharded false matters with two devices, --ngrok
# gets TGI's own error without its token and edge, --node-rank 1 needs a second node.
BASE_ENVIRON = {
    "sharded": {"CUDA_VISIBLE_DEVICES": "0,1"},
    "node_rank": {"NNODES": "2"},
    "ngrok": {"NGROK_AUTHTOKEN": "token", "NGROK_EDGE": "edge"},
}


def example(spec: Spec) -> str:
    """A valid value other than the default, as text."""
    choices = spec.kind.expected.removeprefix("one of: ").split(", ")
    if spec.name in EXAMPLES:
        text = EXAMPLES[spec.name]
    elif spec.kind in (FLAG, BOOL):
        text = "false" if spec.default else "true"
    elif spec.kind.expected.startswith("one of: "):
        text = next(value for value in choices if value != spec.default)
    elif spec.kind in (TEXT, INT_LIST, TEXT_LIST):
        text = "3"
    elif isinstance(spec.default, float):
        text = repr(spec.default / 2)
    else:
        text = str(spec.default + 1 if isinstance(spec.default, int) else 5000)
    return text


def given(spec: Spec, text: str) -> tuple[list[str], dict[str, str]]:
    """``text`` set the way a user sets it: the variable, or the flag when there is none."""
    if spec.env_names:
        return [], {spec.env_names[0]: text}
    assert spec.long is not None and not spec.kind.takes_value
    return [spec.long], {}


def slices(settings: Settings) -> tuple[object, ...]:
    return (
        settings.scheduler(),
        settings.runner(0),
        settings.server(),
        settings.validation_limits(),
        settings.profile(),
    )


def sources() -> Iterator[tuple[Path, str]]:
    """The packages' source files, but for the settings package itself."""
    for path in sorted(PACKAGES.glob("*/src/**/*.py")):
        if SETTINGS_PACKAGE not in path.parents:
            yield path, path.read_text(encoding="utf-8")


SOURCES = list(sources())


def read_outside(pattern: str) -> list[Path]:
    regex = re.compile(pattern)
    return [path for path, text in SOURCES if regex.search(text)]


def name_of(spec: Spec) -> str:
    return spec.name


@pytest.mark.parametrize("spec", [s for s in FIELDS if s.status.kind == "works"], ids=name_of)
def test_a_working_setting_is_read(spec: Spec) -> None:
    base_environ = BASE_ENVIRON.get(spec.name, {})
    argv, environ = given(spec, example(spec))
    base = Settings.from_sources([], base_environ, host=HOST)
    changed = Settings.from_sources(argv, {**base_environ, **environ}, host=HOST)
    if slices(changed) != slices(base):
        return
    readers = read_outside(rf"\bsettings\.{spec.name}\b")
    assert readers, f"{spec.name} changes no slice and no code reads settings.{spec.name}"


@pytest.mark.parametrize(
    "name", sorted({f.name for cls in SLICES for f in dataclasses.fields(cls)})
)
def test_every_slice_attribute_is_read(name: str) -> None:
    assert read_outside(rf"\.{name}\b"), f"no code outside tgi_core.settings reads .{name}"


REFUSED = [spec for spec in FIELDS if spec.status.kind == "refused"]


@pytest.mark.parametrize("spec", REFUSED, ids=name_of)
def test_a_refused_setting_stops_start_up_unless_default(spec: Spec) -> None:
    argv, environ = given(spec, example(spec))
    with pytest.raises(SettingsError) as raised:
        Settings.from_sources(argv, {**BASE_ENVIRON.get(spec.name, {}), **environ}, host=HOST)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"the argument '{spec.display}' (from environment variable ")
    assert message.endswith(f" is refused: {spec.status.reason}")
    if spec.long is not None and spec.kind.takes_value:
        with pytest.raises(SettingsError, match=r"^the argument '[^']*' is refused: "):
            Settings.from_sources([spec.long, example(spec)], {}, host=HOST)
    if spec.default not in (None, ()):
        text = spec.kind.format(spec.default)
        argv, environ = given(spec, text)
        Settings.from_sources(argv, environ, host=HOST)  # the default is accepted


def test_the_refused_and_moot_are_the_ones_we_mean() -> None:
    assert {spec.name for spec in REFUSED} == {
        "weights_cache_override",
        "shard_uds_path",
        "ngrok",
        "ngrok_authtoken",
        "ngrok_edge",
    }
    assert [spec.name for spec in FIELDS if spec.status.kind == "moot"] == ["usage_stats"]
    assert all(spec.status.reason for spec in FIELDS if spec.status.kind != "works")


def test_tgi_errors_come_before_refusals() -> None:
    # TGI's own checks speak first: ngrok without its token is TGI's message.
    with pytest.raises(SettingsError, match=r"^`ngrok-authtoken` must be set"):
        Settings.from_sources(["--ngrok"], {}, host=HOST)


def test_help_and_docs_show_each_status() -> None:
    help_text, docs = render_help(), render_markdown()
    for spec in FIELDS:
        if spec.status.note:
            assert f"[{spec.status.note}]" in " ".join(help_text.split())
            assert spec.status.reason in docs
    refused = "[refused: not supported yet by this server; use --huggingface-hub-cache]"
    assert refused in " ".join(help_text.split())


def test_the_slices_carry_the_newly_read_settings() -> None:
    argv = ["--disable-custom-kernels", "--enable-prefill-logprobs"]
    settings = Settings.from_sources(argv, {"HF_HUB_OFFLINE": "1"}, host=HOST)
    runner = settings.runner(0)
    assert runner.disable_custom_kernels and runner.hf_hub_offline
    assert settings.validation_limits().enable_prefill_logprobs
    default = Settings.from_sources([], {}, host=HOST)
    assert not default.validation_limits().enable_prefill_logprobs


@pytest.mark.parametrize("enabled", [False, True])
def test_prefill_logprobs_are_computed_only_when_enabled(enabled: bool) -> None:
    # TGI-Gaudi: without --enable-prefill-logprobs, decoder_input_details gives an empty
    # prefill, so the engine is not asked for prompt logprobs.
    limits = ValidationLimits(enable_prefill_logprobs=enabled)
    request = GenerateRequest(
        inputs="Hello", parameters=GenerateParameters(decoder_input_details=True)
    )
    valid = validate_generate(request, limits, ByteEncoder(), stream=False)
    assert valid.decoder_input_details
    assert valid.to_generation_request(1).prompt_logprobs is enabled
    assert valid.with_random_seed().to_generation_request(2).prompt_logprobs is enabled
