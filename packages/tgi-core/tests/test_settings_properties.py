"""Random argv/environ: only SettingsError escapes, and what parses round-trips."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from tgi_core.settings import FIELDS, HostInfo, Settings, SettingsError, Spec
from tgi_core.settings.checks import DEVICE_LIST_VARIABLES

HOSTS = st.builds(
    HostInfo, habana_available=st.booleans(), embedded_model=st.sampled_from([None, "/m.gguf"])
)
FLAGS = [spec.long for spec in FIELDS if spec.long is not None]
SHORTS = [f"-{spec.short}" for spec in FIELDS if spec.short is not None]
ENV_NAMES = [env for spec in FIELDS for env in spec.env_names] + list(DEVICE_LIST_VARIABLES)
POOL = ["0", "1", "2", "7", "16", "128", "4095", "4096", "10000", "-1", "0.3", "1.5", "1e3",
        "true", "false", "True", "0,1", "1,x", "", " ", "abc", "fifo", "hpu", "cpu", "auto",
        "bfloat16", "exl2", "a@b@c", "x=y", "nan", "inf", "65536", "+5", "١٢"]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(POOL),
    st.text(max_size=8),
    st.integers(min_value=-5, max_value=20_000).map(str),
)


def _accepts(spec: Spec, text: str) -> bool:
    try:
        spec.kind.parse(text)
    except ValueError:
        return False
    return True


# Per setting, the pool values its kind accepts (plus its own default), so many examples parse.
VALID = {
    spec.name: [text for text in POOL if _accepts(spec, text)]
    + ([spec.kind.format(spec.default)] if spec.default not in (None, ()) else [])
    for spec in FIELDS
}


def _value_for(spec: Spec) -> st.SearchStrategy[str]:
    valid = VALID[spec.name]
    return st.sampled_from(valid) if valid else VALUES


def _not_help(token: str) -> bool:
    """Tokens that would ask for help/version are not errors; keep them out."""
    if token.startswith("--"):
        return token.partition("=")[0] not in ("--help", "--version")
    return not (token.startswith("-") and ("h" in token or "V" in token))


WITH_FLAG = [spec for spec in FIELDS if spec.long is not None]
# Mostly well-formed options with accepted values, some garbage values and stray tokens.
OPTION = st.one_of(
    st.sampled_from(WITH_FLAG).flatmap(
        lambda spec: _value_for(spec).map(
            lambda text: [f"{spec.long}", text] if spec.kind.takes_value else [f"{spec.long}"]
        )
    ),
    st.sampled_from(WITH_FLAG).flatmap(
        lambda spec: VALUES.map(lambda text: [f"{spec.long}={text}"])
    ),
    st.lists(
        st.one_of(st.sampled_from([*FLAGS, *SHORTS, "--", "--nope", "-x"]), VALUES), max_size=2
    ),
).map(lambda tokens: [token for token in tokens if _not_help(token)])
ARGV = st.lists(OPTION, max_size=6).map(lambda options: [t for option in options for t in option])
ENV_ENTRY = st.one_of(
    st.sampled_from([spec for spec in FIELDS if spec.env_names]).flatmap(
        lambda spec: st.tuples(st.sampled_from(spec.env_names), _value_for(spec))
    ),
    st.tuples(st.sampled_from(ENV_NAMES), VALUES),
)
ENVIRON = st.lists(ENV_ENTRY, max_size=8).map(dict)


@settings(max_examples=400, deadline=None)
@given(argv=ARGV, environ=ENVIRON, host=HOSTS)
def test_only_settings_error_escapes(
    argv: list[str], environ: dict[str, str], host: HostInfo
) -> None:
    try:
        parsed = Settings.from_sources(argv, environ, host=host)
    except SettingsError as error:
        message = str(error)
        assert message and "\n" not in message
        return
    # Whatever parses is consistent and gives consistent slices.
    assert parsed.max_input_tokens < parsed.max_total_tokens
    assert parsed.max_input_tokens <= parsed.max_batch_prefill_tokens
    assert parsed.scheduler().block_size == parsed.runner().block_size == parsed.block_size
    assert parsed.server().limits.max_total_tokens == parsed.scheduler().max_total_tokens


@settings(max_examples=200, deadline=None)
@given(argv=ARGV, environ=ENVIRON, host=HOSTS)
def test_to_environ_rebuilds_the_same_settings(
    argv: list[str], environ: dict[str, str], host: HostInfo
) -> None:
    try:
        parsed = Settings.from_sources(argv, environ, host=host)
    except SettingsError:
        return
    rebuilt = Settings.from_sources([], parsed.to_environ(), host=host)
    assert rebuilt == dataclasses.replace(parsed, env=False)  # --env has no variable


@settings(max_examples=100, deadline=None)
@given(cli=st.integers(0, 10_000), env=st.integers(0, 10_000))
def test_cli_always_wins_over_environment(cli: int, env: int) -> None:
    parsed = Settings.from_sources(
        ["--max-waiting-tokens", str(cli)],
        {"MAX_WAITING_TOKENS": str(env), "QUEUE_THRESHOLD_MS": str(env)},
        host=HostInfo(habana_available=False, embedded_model=None),
    )
    assert (parsed.max_waiting_tokens, parsed.queue_threshold_ms) == (cli, env)
