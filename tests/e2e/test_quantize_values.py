"""Every ``--quantize`` value of TGI through the real launcher: served (the embedded SmolLM2
answers the seed's question coherently, and /info says how its weights are held; one launch
per scheme, the values that name the same scheme checked on its plan) or refused at start-up
with one line and exit status 2.

gptq and awq name pre-quantized checkpoints: their loading, and the one-line refusal of a
checkpoint that does not declare them, are tested on tiny checkpoints of each layout in
tgi-hpu-kernels' test_prequantized.py.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tgi_core.settings import Settings
from tgi_core.settings.checks import SERVED_QUANTIZE, UNSERVED_QUANTIZE
from tgi_server.testing import LaunchedService, smollm2_gguf

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LAUNCHER = str(Path(sys.executable).with_name("text-generation-launcher"))
# What /info's compute_path says of the weights under each served method.
WEIGHTS = {
    "bitsandbytes": "int8 (per channel) projections, dense LM head",
    "eetq": "int8 (per channel) projections, dense LM head",
    "bitsandbytes-nf4": "int4 (group 64) projections, dense LM head",
    "bitsandbytes-fp4": "int4 (group 64) projections, dense LM head",
    "fp8": "FP8 projections, dense LM head",
}
PREQUANTIZED = ("gptq", "awq")


def _prompt() -> str:
    transformers = pytest.importorskip("transformers")
    gguf = smollm2_gguf()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    text: str = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is Deep Learning?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    return text


def _get(service: LaunchedService, path: str, body: dict[str, Any] | None = None) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=300)
    try:
        if body is None:
            connection.request("GET", path)
        else:
            headers = {"Content-Type": "application/json"}
            connection.request("POST", path, body=json.dumps(body), headers=headers)
        response = connection.getresponse()
        assert response.status == 200
        return json.loads(response.read())
    finally:
        connection.close()


def test_the_values_are_all_of_tgis() -> None:
    assert {*WEIGHTS, *PREQUANTIZED} == set(SERVED_QUANTIZE)
    assert set(UNSERVED_QUANTIZE) == {"compressed-tensors", "exl2", "marlin"}


# eetq and bitsandbytes-fp4 are bitsandbytes' and bitsandbytes-nf4's schemes under another
# name: one launcher per scheme, the aliases checked on the plan the runner builds
ALIASES = {"eetq": "bitsandbytes", "bitsandbytes-fp4": "bitsandbytes-nf4"}


def test_an_alias_value_is_served_as_its_scheme() -> None:
    from tgi_hpu_kernels.loader.quantize import plan_quantization

    for alias, scheme in ALIASES.items():
        plan, twin = plan_quantization(alias, None), plan_quantization(scheme, None)
        assert plan is not None and twin is not None
        assert (plan.linears, plan.head) == (twin.linears, twin.head)
        assert plan.describe() == f"{WEIGHTS[alias]} (--quantize {alias})"


@pytest.mark.parametrize("method", sorted(set(WEIGHTS) - set(ALIASES)))
def test_a_served_method_answers(method: str, launch: Any, stop_and_check: Any) -> None:
    service = launch(f"quantize-{method}", "--quantize", method)
    try:
        info = _get(service, "/info")
        assert f"weights: {WEIGHTS[method]} (--quantize {method})" in info["compute_path"]
        body = {"inputs": _prompt(), "parameters": {"max_new_tokens": 24}}
        answer = _get(service, "/generate", body)["generated_text"]
        assert "learning" in answer.lower(), answer
    finally:
        stop_and_check(service)


@pytest.mark.parametrize("method", sorted(UNSERVED_QUANTIZE))
def test_an_unserved_method_exits_2_with_one_line(method: str) -> None:
    done = subprocess.run(
        [LAUNCHER, "--quantize", method],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=Settings.from_sources([], {}).child_environ({}),
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        f"error: `{method}` checkpoints are not supported by this server (it serves "
        f"{', '.join(SERVED_QUANTIZE)}) (see --quantize <QUANTIZE>)"
    ]
