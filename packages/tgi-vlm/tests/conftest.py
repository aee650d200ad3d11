"""Shared fixtures: images made with Pillow, data URLs, a local HTTP image server, and a tiny
random LLaVA-NeXT checkpoint built from transformers configs (never downloaded)."""

from __future__ import annotations

import base64
import contextlib
import io
import random
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tgi_vlm.llava_next import ImageProcessorConfig

MakeImage = Callable[..., bytes]
DataUrl = Callable[[bytes, str], str]
RandomImage = Callable[..., Image.Image]

SERVED_SIZE = (12, 20)  # (height, width) of the PNG the HTTP server serves
NUM_LARGE_BYTES = 5000
SLOW_HEADER_DELAY_S = 1.5
SLOW_BODY_STEP_S = 0.05
SLOW_IMAGE_DELAY_S = 0.3
HUGE_DECLARED_BYTES = 10 << 30
BOMB_SIDE = 8000  # 64 Mpixels (8 MB decoded as 1-bit) in a PNG of a few KB


def random_image(height: int, width: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """An image of random pixels (reproducible from ``seed``)."""
    num_bands = len(Image.new(mode, (1, 1)).getbands())
    pixels = random.Random(seed).randbytes(height * width * num_bands)
    return Image.frombytes(mode, (width, height), pixels)


def encode_image(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return buffer.getvalue()


@pytest.fixture(scope="session", name="random_image")
def random_image_fixture() -> RandomImage:
    """``random_image(height, width, mode="RGB", seed=0)`` -> a PIL image of random pixels."""
    return random_image


@pytest.fixture(scope="session")
def make_image() -> MakeImage:
    """``make_image(height, width, image_format="PNG", mode="RGB", seed=0)`` -> encoded bytes."""

    def make(
        height: int, width: int, image_format: str = "PNG", mode: str = "RGB", seed: int = 0
    ) -> bytes:
        return encode_image(random_image(height, width, mode, seed), image_format)

    return make


@pytest.fixture(scope="session")
def data_url() -> DataUrl:
    """``data_url(data, mimetype)`` -> the markdown image ``![](data:<mime>;base64,...)``."""

    def markdown(data: bytes, mimetype: str) -> str:
        return f"![](data:{mimetype};base64,{base64.b64encode(data).decode()})"

    return markdown


class _ImageHandler(BaseHTTPRequestHandler):
    """Routes: ``/image.png``, ``/missing`` (404 page), ``/large`` (with Content-Length),
    ``/large-unsized`` (no Content-Length, closed at the end), ``/slow-headers`` (answers
    late), ``/slow-body`` (sends its body a byte at a time), ``/slow-image.png`` (the PNG after
    ``SLOW_IMAGE_DELAY_S``), ``/huge`` (an endless body), ``/huge-declared`` (declares 10 GiB),
    ``/bomb.png`` (a small PNG of ``BOMB_SIDE``² pixels), ``/redirect?to=<url>`` (302).
    ``/redirect-loop`` (302 to itself)."""

    png: bytes = b""
    bomb: bytes = b""

    def do_GET(self) -> None:
        routes: dict[str, Callable[[], None]] = {
            "/image.png": lambda: self._send(200, self.png, "image/png"),
            "/missing": lambda: self._send(404, b"<html>not found</html>", "text/html"),
            "/large": lambda: self._send(200, b"x" * NUM_LARGE_BYTES, "image/png"),
            "/large-unsized": self._send_unsized,
            "/slow-headers": self._send_late,
            "/slow-body": self._send_slowly,
            "/slow-image.png": self._send_after_a_while,
            "/huge": self._send_endlessly,
            "/huge-declared": self._send_declared_huge,
            "/bomb.png": lambda: self._send(200, self.bomb, "image/png"),
            "/redirect-loop": lambda: self._redirect("/redirect-loop"),
        }
        path, _, query = self.path.partition("?")
        if path == "/redirect":
            self._redirect(urllib.parse.parse_qs(query)["to"][0])
            return
        routes.get(path, lambda: self._send(404, b"", "text/plain"))()

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_unsized(self) -> None:
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        self.wfile.write(b"x" * NUM_LARGE_BYTES)

    def _send_late(self) -> None:
        time.sleep(SLOW_HEADER_DELAY_S)
        with contextlib.suppress(OSError):  # the client gave up, as the test wants
            self._send(200, self.png, "image/png")

    def _send_slowly(self) -> None:
        body = self.png
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):  # the client gave up, as the test wants
            for index in range(min(len(body), 40)):
                self.wfile.write(body[index : index + 1])
                self.wfile.flush()
                time.sleep(SLOW_BODY_STEP_S)

    def _send_after_a_while(self) -> None:
        time.sleep(SLOW_IMAGE_DELAY_S)
        with contextlib.suppress(OSError):
            self._send(200, self.png, "image/png")

    def _send_endlessly(self) -> None:
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        with contextlib.suppress(OSError):  # until the client hangs up (or 1 GiB)
            for _ in range(1024):
                self.wfile.write(b"\0" * (1 << 20))

    def _send_declared_huge(self) -> None:
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(HUGE_DECLARED_BYTES))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(b"\0" * 1000)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: no access log on stderr."""


@dataclass(frozen=True)
class ImageServer:
    base_url: str
    png: bytes  # what /image.png serves
    png_size: tuple[int, int]  # its (height, width)
    num_large_bytes: int  # the size of /large and /large-unsized
    slow_header_delay_s: float


@pytest.fixture(scope="module")
def image_server(make_image: MakeImage) -> Iterator[ImageServer]:
    """A real HTTP server on 127.0.0.1 (port chosen by the OS), stopped at teardown."""
    png = make_image(*SERVED_SIZE, seed=7)
    bomb = encode_image(Image.new("1", (BOMB_SIDE, BOMB_SIDE)), "PNG")
    handler = type("Handler", (_ImageHandler,), {"png": png, "bomb": bomb})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ImageServer(
            base_url=f"http://127.0.0.1:{server.server_address[1]}",
            png=png,
            png_size=SERVED_SIZE,
            num_large_bytes=NUM_LARGE_BYTES,
            slow_header_delay_s=SLOW_HEADER_DELAY_S,
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# A tiny LLaVA-NeXT: CLIP 32x32 images in 8x8 patches (16 features per patch), grids of 1x2,
# 2x1 and 2x2 patches, a 2-layer Llama of width 64. Layer -2 of the 3-layer tower is read,
# so the loader must skip the last layer and post_layernorm.
TINY_PINPOINTS = [[32, 64], [64, 32], [64, 64]]
TINY_IMAGE_TOKEN_ID = 100
TINY_VOCAB_SIZE = 128
# Our options for tiny_hf_image_processor (what its saved preprocessor_config.json reads as).
TINY_PROCESSOR = ImageProcessorConfig.from_dict(
    {
        "size": {"shortest_edge": 32},
        "crop_size": {"height": 32, "width": 32},
        "image_grid_pinpoints": TINY_PINPOINTS,
    }
)


def build_tiny_hf_config(**overrides: Any) -> Any:
    """A transformers ``LlavaNextConfig`` for the tiny model (``overrides`` on top)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig

    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    text = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=TINY_VOCAB_SIZE,
    )
    options: dict[str, Any] = {
        "vision_config": vision,
        "text_config": text,
        "image_token_index": TINY_IMAGE_TOKEN_ID,
        "image_grid_pinpoints": TINY_PINPOINTS,
    }
    return LlavaNextConfig(**(options | overrides))


@pytest.fixture(scope="session")
def tiny_hf_config() -> Callable[..., Any]:
    """``tiny_hf_config(**overrides)`` -> the tiny model's transformers config."""
    return build_tiny_hf_config


@pytest.fixture(scope="session")
def tiny_hf_model() -> Any:
    """A random transformers ``LlavaNextForConditionalGeneration`` (float32, eval mode)."""
    import torch
    from transformers import LlavaNextForConditionalGeneration

    torch.manual_seed(0)
    return LlavaNextForConditionalGeneration(build_tiny_hf_config()).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_hf_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model saved as safetensors by ``save_pretrained`` (config.json included)."""
    folder = tmp_path_factory.mktemp("tiny-llava-next")
    tiny_hf_model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_hf_image_processor() -> Any:
    """transformers' PIL ``LlavaNextImageProcessorPil`` matching the tiny vision tower."""
    from transformers import LlavaNextImageProcessorPil

    return LlavaNextImageProcessorPil(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_grid_pinpoints=TINY_PINPOINTS,
    )


def tiny_tokenizer() -> Any:
    """A word-level tokenizer whose ``<image>`` is the tiny model's image token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "hello": 1, "world": 2, "<image>": TINY_IMAGE_TOKEN_ID}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", additional_special_tokens=["<image>"]
    )


@pytest.fixture(scope="session")
def tiny_hf_processor(tiny_hf_image_processor: Any) -> Any:
    """transformers' ``LlavaNextProcessor`` for the tiny model (``default`` strategy)."""
    from transformers import LlavaNextProcessor

    return LlavaNextProcessor(
        image_processor=tiny_hf_image_processor,
        tokenizer=tiny_tokenizer(),
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


@pytest.fixture(scope="session")
def llava_folder(
    tiny_checkpoint: Path, tiny_hf_image_processor: Any, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny checkpoint with its preprocessor_config.json and tokenizer.json."""
    folder = tmp_path_factory.mktemp("llava-serving") / "tiny-llava"
    shutil.copytree(tiny_checkpoint, folder)
    tiny_hf_image_processor.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder
