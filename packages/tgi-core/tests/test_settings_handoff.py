"""The launcher resolves the settings once and hands its children one encoded object
(``TGI_SETTINGS``); a child decodes it and reads no settings variable, or, started by hand
without it, reads flags and variables as the launcher does."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tgi_core.settings import SETTINGS_VARIABLE, HostInfo, Settings, SettingsError

PLAIN = HostInfo(habana_available=False, embedded_model=None)
ARGV = ["--max-batch-size", "7", "--api-key", "sk-1", "--cors-allow-origin", "https://a"]
ENVIRON = {"HF_API_TOKEN": "hf-2", "PROF_RANKS": "0,1", "WATERMARK_GAMMA": "0.25"}


@pytest.fixture
def settings() -> Settings:
    return Settings.from_sources([*ARGV, "--rope-factor", "1.5"], ENVIRON, host=PLAIN)


def test_json_round_trips_every_value_secrets_included(settings: Settings) -> None:
    assert Settings.from_json(settings.to_json()) == settings
    assert settings.hf_token == "hf-2" and settings.prof_ranks == (0, 1)


@pytest.mark.parametrize("text", ["", "{", "[]", '{"port": 1}'])
def test_what_is_not_settings_is_one_line_naming_the_variable(text: str) -> None:
    with pytest.raises(SettingsError, match=rf"^{SETTINGS_VARIABLE} holds no valid settings: "):
        Settings.from_json(text)


def test_a_value_of_the_wrong_type_is_refused(settings: Settings) -> None:
    text = settings.to_json().replace('"port":3000', '"port":"x"')
    with pytest.raises(SettingsError, match=r"Expected `int`, got `str` - at `\$.port`$"):
        Settings.from_json(text)


def test_the_child_environment_holds_the_settings_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This process's own settings variables do not reach the child: the resolved ones do.
    monkeypatch.setenv("MAX_BATCH_SIZE", "99")
    monkeypatch.setenv("MAX_INPUT_LENGTH", "5")
    child = settings.child_environ({"TGI_EXTRA": "1"})
    assert Settings.from_json(child[SETTINGS_VARIABLE]) == settings
    assert "MAX_BATCH_SIZE" not in child and "MAX_INPUT_LENGTH" not in child
    assert child["TGI_EXTRA"] == "1"
    assert child.get("PATH") == os.environ.get("PATH")  # noqa: TID251 - the test compares
    # Libraries read these themselves (huggingface_hub): they come resolved, alias and all.
    assert (child["HF_TOKEN"], child["HF_HUB_OFFLINE"]) == ("hf-2", "false")
    assert "HF_API_TOKEN" not in child


def test_the_metrics_folder_reaches_prometheus_client_as_its_variable(settings: Settings) -> None:
    served = Settings.from_sources([], {"PROMETHEUS_MULTIPROC_DIR": "/m"}, host=PLAIN)
    assert served.child_environ()["PROMETHEUS_MULTIPROC_DIR"] == "/m"
    assert "PROMETHEUS_MULTIPROC_DIR" not in settings.child_environ()


def test_a_child_decodes_the_settings_and_reads_no_variable(settings: Settings) -> None:
    code = "from tgi_core.settings import Settings; print(Settings.from_parent([]).to_json())"
    environ = settings.child_environ({"MAX_BATCH_SIZE": "99", "PORT": "not a port"})
    done = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True
    )
    assert Settings.from_json(done.stdout.strip()) == settings


def test_from_parent_decodes_the_variable_and_takes_no_flags(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SETTINGS_VARIABLE, settings.to_json())
    assert Settings.from_parent([]) == settings
    with pytest.raises(SettingsError, match=rf"^{SETTINGS_VARIABLE} holds the settings: give"):
        Settings.from_parent(["--port", "1"])


def test_without_the_variable_a_child_reads_flags_and_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(SETTINGS_VARIABLE, raising=False)
    monkeypatch.setenv("MAX_BATCH_SIZE", "9")
    started = Settings.from_parent(["--port", "1234"])
    assert (started.port, started.max_batch_size) == (1234, 9)
