"""LLaVA-NeXT served by our runner and scheduler: greedy tokens equal transformers'
``generate`` on the tiny random model (one image, two images of different sizes, batched
with a text-only prompt), prompts with different images never share prefix-cache KV, and
2 shards (rank 1 the server's shard process) serve images as one does."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from tgi_core.contract import (
    GenerationRequest,
    ImageInput,
    PrefillItem,
    PrefillShape,
    SamplingParams,
    StepPlan,
    TokenEvent,
)
from tgi_core.settings.slices import RunnerSettings, SchedulerSettings
from tgi_hpu_kernels import TorchModelRunner
from tgi_hpu_kernels.device.cpu import CpuDevice
from tgi_hpu_kernels.parallel import local_shards
from tgi_scheduler import Engine
from tgi_server.testing import free_port
from tgi_vlm.llava_next import LlavaNextConfig, num_image_tokens
from tgi_vlm.llava_next.embedder import LlavaNextEmbedder
from tgi_vlm.llava_next.family import LLAVA_NEXT
from tgi_vlm.llava_next.patches import patches_input
from tgi_vlm.runner_parts import runner_parts_for

from .conftest import TINY_IMAGE_TOKEN_ID, TINY_PROCESSOR, random_image

NUM_NEW = 6
BLOCK_SIZE = 4
TEXT_PROMPT = (1, 2, 2, 1)  # hello world world hello
SETTINGS: dict[str, Any] = {
    "dtype": "float32",
    "device": "cpu",
    "block_size": BLOCK_SIZE,
    "max_input_tokens": 400,
    "max_total_tokens": 512,
    "base_image_tokens": 256,
}


def encoded(height: int, width: int, seed: int) -> tuple[Image.Image, ImageInput]:
    """A random image and what the front end sends the engine for it (its raw patches)."""
    image = random_image(height, width, seed=seed)
    return image, patches_input(image, TINY_PROCESSOR)


@pytest.fixture(scope="module")
def runner(llava_folder: Path) -> TorchModelRunner:
    settings = RunnerSettings(model_id=str(llava_folder), **SETTINGS)
    parts = runner_parts_for(settings)
    assert parts is not None
    assert isinstance(parts.prompt_embedder, LlavaNextEmbedder)
    assert parts.nested_model == LLAVA_NEXT.nested_model
    return TorchModelRunner(
        settings,
        device=CpuDevice(),
        num_kv_blocks=256,
        prompt_embedder=parts.prompt_embedder,
        nested_model=parts.nested_model,
    )


def hf_tokens(model: Any, processor: Any, text: str, images: Sequence[Image.Image]) -> Any:
    inputs = processor(text=text, images=list(images) or None, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=NUM_NEW, do_sample=False, eos_token_id=None, pad_token_id=0
        )
    prompt_ids = tuple(inputs["input_ids"][0].tolist())
    return prompt_ids, out[0, len(prompt_ids) :].tolist()


def make_engine(runner: TorchModelRunner) -> Engine:
    settings = SchedulerSettings(
        max_input_tokens=400,
        max_total_tokens=512,
        max_batch_prefill_tokens=2048,
        block_size=BLOCK_SIZE,
        pad_sequence_to_multiple_of=BLOCK_SIZE,
    )
    return Engine.create(settings, runner, eos_token_ids=())


def run(
    runner: TorchModelRunner, requests: Sequence[GenerationRequest], engine: Engine | None = None
) -> dict[int, list[int]]:
    """Every request's generated tokens, all queued at once on ``engine`` (a fresh one)."""
    engine = engine or make_engine(runner)
    for item in requests:
        engine.add_request(item)
    tokens: dict[int, list[int]] = {r.request_id: [] for r in requests}
    while engine.has_unfinished():
        for event in engine.step():
            assert isinstance(event, TokenEvent), event
            tokens[event.request_id].append(event.token_id)
    return tokens


def request(request_id: int, prompt_ids: Sequence[int], images: Sequence[ImageInput] = ()) -> Any:
    return GenerationRequest(
        request_id=request_id,
        prompt_ids=tuple(prompt_ids),
        max_new_tokens=NUM_NEW,
        ignore_eos=True,
        images=tuple(images),
    )


Case = tuple[str, list[tuple[int, int, int]]]
CASES: list[Case] = [
    ("hello <image> world", [(40, 24, 1)]),
    ("<image> hello world <image> hello", [(20, 60, 2), (64, 64, 3)]),
]


@pytest.mark.parametrize(("text", "sizes"), CASES)
def test_greedy_tokens_equal_transformers(
    runner: TorchModelRunner,
    tiny_hf_model: Any,
    tiny_hf_processor: Any,
    text: str,
    sizes: list[tuple[int, int, int]],
) -> None:
    pairs = [encoded(*size) for size in sizes]
    prompt_ids, expected = hf_tokens(tiny_hf_model, tiny_hf_processor, text, [p[0] for p in pairs])
    images = [p[1] for p in pairs]
    alone = run(runner, [request(0, prompt_ids, images)])
    assert alone[0] == expected
    # batched with a text-only prompt, which must not change either answer
    _, text_expected = hf_tokens(tiny_hf_model, tiny_hf_processor, "hello world world hello", [])
    batched = run(runner, [request(1, TEXT_PROMPT), request(2, prompt_ids, images)])
    assert batched[2] == expected
    assert batched[1] == text_expected


def test_prefix_cache_never_shares_kv_across_images(
    runner: TorchModelRunner, tiny_hf_model: Any, tiny_hf_processor: Any
) -> None:
    """Same text, same image size (so the same prompt ids), different pixels: the second
    request reuses no block and answers for its own image; the same image again does hit."""
    text = "hello world hello <image> world"
    (first_image, first), (second_image, second) = encoded(40, 40, 4), encoded(40, 40, 5)
    prompt_ids, first_expected = hf_tokens(tiny_hf_model, tiny_hf_processor, text, [first_image])
    same_ids, second_expected = hf_tokens(tiny_hf_model, tiny_hf_processor, text, [second_image])
    assert same_ids == prompt_ids and first_expected != second_expected
    engine = make_engine(runner)
    counters = engine.scheduler.counters
    assert run(runner, [request(0, prompt_ids, [first])], engine)[0] == first_expected
    assert run(runner, [request(1, prompt_ids, [second])], engine)[1] == second_expected
    assert counters.prefix_cache_hit_tokens == 0
    assert run(runner, [request(2, prompt_ids, [first])], engine)[2] == first_expected
    assert counters.prefix_cache_hit_tokens > 0  # the cache works: the test could see sharing


def test_max_input_tokens_below_base_image_tokens_is_refused(llava_folder: Path) -> None:
    settings = RunnerSettings(
        model_id=str(llava_folder), dtype="float32", max_input_tokens=400, base_image_tokens=401
    )
    with pytest.raises(ValueError, match=r"`max_input_tokens`\(400\) must be >= BASE_IMAGE_TOKENS"):
        runner_parts_for(settings)


def test_text_checkpoint_has_no_embedder(tmp_path: Path) -> None:
    from tgi_hpu_kernels.testing import save_tiny_checkpoint

    save_tiny_checkpoint(tmp_path, "llama")
    assert runner_parts_for(RunnerSettings(model_id=str(tmp_path))) is None


def test_transformers_4_52_key_layout_serves_the_same_tokens(
    llava_folder: Path, tmp_path: Path, tiny_hf_model: Any, tiny_hf_processor: Any
) -> None:
    """``model.language_model.*`` + ``lm_head.*`` (and ``model.vision_tower.*``) load too."""
    from safetensors.torch import load_file, save_file

    rename = {
        "language_model.model.": "model.language_model.",
        "language_model.lm_head.": "lm_head.",
        "vision_tower.": "model.vision_tower.vision_model.",
        "multi_modal_projector.": "model.multi_modal_projector.",
        "image_newline": "model.image_newline",
    }
    tensors = load_file(llava_folder / "model.safetensors")
    renamed = {}
    for name, tensor in tensors.items():
        prefix = next(old for old in rename if name.startswith(old))
        renamed[rename[prefix] + name.removeprefix(prefix)] = tensor
    for path in llava_folder.iterdir():
        if path.suffix != ".safetensors":
            shutil.copy(path, tmp_path / path.name)
    save_file(renamed, tmp_path / "model.safetensors")
    settings = RunnerSettings(
        model_id=str(tmp_path), dtype="float32", device="cpu", block_size=BLOCK_SIZE,
        max_input_tokens=400, max_total_tokens=512, base_image_tokens=256,
    )  # fmt: skip
    parts = runner_parts_for(settings)
    assert parts is not None
    runner = TorchModelRunner(
        settings,
        device=CpuDevice(),
        num_kv_blocks=256,
        prompt_embedder=parts.prompt_embedder,
        nested_model=parts.nested_model,
    )
    image, image_input = encoded(40, 24, 1)
    prompt_ids, expected = hf_tokens(
        tiny_hf_model, tiny_hf_processor, "hello <image> world", [image]
    )
    assert run(runner, [request(0, prompt_ids, [image_input])])[0] == expected


def test_recompute_after_preemption_uses_the_images_again(
    runner: TorchModelRunner, llava_folder: Path
) -> None:
    """A prefill of prompt + generated tokens (what a preempted sequence sends; one of them
    an ``<image>`` id, a plain token there) continues as the uninterrupted sequence."""
    from tgi_core.contract import DecodeItem, DecodeShape

    _, image_input = encoded(40, 24, 1)
    num_tokens = num_image_tokens(LlavaNextConfig.from_folder(llava_folder), 40, 24)
    prompt_ids = (1, *[TINY_IMAGE_TOKEN_ID] * num_tokens, 2)
    table = tuple(range(64))

    def prefill(request_id: int, token_ids: tuple[int, ...]) -> StepPlan:
        item = PrefillItem(
            request_id=request_id,
            token_ids=token_ids,
            num_prompt_tokens=len(prompt_ids),
            num_cached_tokens=0,
            block_table=table,
            sampling=SamplingParams(),
            images=(image_input,),
        )
        return StepPlan(step_id=0, shape=PrefillShape(1, len(token_ids)), prefill=(item,))

    [first] = runner.execute(prefill(7, prompt_ids)).outputs
    generated = (first.token_id, TINY_IMAGE_TOKEN_ID)
    for position, token_id in enumerate(generated, start=len(prompt_ids)):
        decode = DecodeItem(request_id=7, token_id=token_id, position=position, block_table=table)
        plan = StepPlan(step_id=1, shape=DecodeShape(1, len(table)), decode=(decode,))
        [uninterrupted] = runner.execute(plan).outputs
    [recomputed] = runner.execute(prefill(8, prompt_ids + generated)).outputs
    assert recomputed.token_id == uninterrupted.token_id
    assert recomputed.logprob == pytest.approx(uninterrupted.logprob, abs=1e-4)
    runner.execute(StepPlan(step_id=2, shape=None, released=(7, 8)))


def image_tokens(folder: Path, height: int, width: int) -> tuple[int, ...]:
    """The ``<image>`` ids an image of that size expands into."""
    config = LlavaNextConfig.from_folder(folder)
    return (TINY_IMAGE_TOKEN_ID,) * num_image_tokens(config, height, width)


@contextmanager
def two_shards(folder: Path) -> Iterator[TorchModelRunner]:
    """Rank 0's runner here; rank 1 the server's own shard process (``tgi_server.engine.
    shard``, which builds its runner as the engine's shards do), over gloo on 127.0.0.1."""
    settings = RunnerSettings(
        model_id=str(folder), **SETTINGS, num_kv_blocks=256, num_shard=2,
        master_addr="127.0.0.1", master_port=free_port(),
    )  # fmt: skip
    parts = runner_parts_for(settings)
    assert parts is not None and parts.prompt_embedder is not None
    command = (sys.executable, "-m", "tgi_server.engine.shard", str(os.getpid()))
    with local_shards(settings, command, nested_model=parts.nested_model) as (group, _):
        runner = TorchModelRunner(
            settings,
            device=CpuDevice(),
            prompt_embedder=parts.prompt_embedder,
            nested_model=parts.nested_model,
            group=group,
        )
        try:
            yield runner
        finally:
            runner.close()


def teacher_forced(runner: TorchModelRunner, llava_folder: Path) -> list[torch.Tensor]:
    """Every prompt token's logits of three prefills, one step each: an image prompt, a
    text-only prompt, a prompt of two images (KV blocks apart); then all are released."""
    small, large = encoded(40, 24, 1)[1], encoded(64, 64, 3)[1]
    small_ids, large_ids = image_tokens(llava_folder, 40, 24), image_tokens(llava_folder, 64, 64)
    prompts = [
        ((1, *small_ids, 2), (small,)),
        (TEXT_PROMPT, ()),
        ((*large_ids, 2, *small_ids, 1), (large, small)),
    ]
    logits = []
    for request_id, (token_ids, images) in enumerate(prompts):
        first_block = 40 * request_id
        item = PrefillItem(
            request_id=request_id,
            token_ids=token_ids,
            num_prompt_tokens=len(token_ids),
            num_cached_tokens=0,
            block_table=tuple(range(first_block, first_block + 40)),
            sampling=SamplingParams(),
            images=images,
        )
        shape = PrefillShape(1, len(token_ids))
        plan = StepPlan(step_id=request_id, shape=shape, prefill=(item,))
        logits.append(runner.compute_logits(plan, every_token=True))
    runner.execute(StepPlan(step_id=3, shape=None, released=(0, 1, 2)))
    return logits


@pytest.mark.slow  # a shard process per runner
def test_two_shards_serve_images_as_one(runner: TorchModelRunner, llava_folder: Path) -> None:
    """Rank 0 alone runs the vision side and broadcasts the prompt embeddings: the logits
    of image prefills (a text-only one between them) and the greedy tokens of an image
    prompt batched with a text prompt are one shard's."""
    expected = teacher_forced(runner, llava_folder)
    prompt_ids = (2, *image_tokens(llava_folder, 40, 24), 1)
    requests = [request(1, TEXT_PROMPT), request(2, prompt_ids, [encoded(40, 24, 1)[1]])]
    expected_tokens = run(runner, requests)
    with two_shards(llava_folder) as sharded:
        logits = teacher_forced(sharded, llava_folder)
        tokens = run(sharded, requests)
    for got, want in zip(logits, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    assert tokens == expected_tokens
