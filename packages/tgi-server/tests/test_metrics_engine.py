"""The engine's step metrics on ``/metrics`` after real requests: TGI's names, labels and
buckets, the same engine-wide values from every worker."""

from __future__ import annotations

import asyncio
import re

import falcon.testing
import pytest

from tgi_server.testing import Harness, OpenStream

DURATIONS = ("forward", "decode", "filter", "inference")
METHODS = ("prefill", "decode")
SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


def scrape(client: falcon.testing.TestClient) -> dict[str, float]:
    """Every sample of ``/metrics``, keyed by its name and labels as printed."""
    samples: dict[str, float] = {}
    for line in client.simulate_get("/metrics").text.splitlines():
        if line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, line
        samples[match[1] + (match[2] or "")] = float(match[3])
    return samples


@pytest.fixture(scope="module")
def samples(harness: Harness) -> dict[str, float]:
    """The scrape after a plain request and a request that joins a running one."""
    app = harness.app()
    client = falcon.testing.TestClient(app)
    assert client.simulate_post("/generate", json=request(3)).status_code == 200

    async def joined() -> None:
        first = OpenStream(app, "/generate_stream", request(24))
        await first.wait_for(b'"index":2,')  # decoding: the next prefill joins its batch
        second = OpenStream(app, "/generate_stream", request(2))
        for stream in (second, first):
            assert b'"generated_text":"' in await stream.finish(timeout_s=30)

    harness.runner.step_delay_s = 0.01  # first must still run when second arrives
    try:
        asyncio.run(joined())
    finally:
        harness.runner.reset()
    harness.wait_until_idle()
    return scrape(client)


def request(max_new_tokens: int) -> dict[str, object]:
    return {"inputs": "Hello", "parameters": {"max_new_tokens": max_new_tokens}}


def test_step_durations_per_method(samples: dict[str, float]) -> None:
    for duration in DURATIONS:
        name = f"tgi_batch_{duration}_duration"
        for method in METHODS:
            label = f'method="{method}"'
            buckets = [k for k in samples if k.startswith(f"{name}_bucket{{") and label in k]
            assert len(buckets) == 36, (name, method)  # TGI's 35 bounds and +Inf
            count = samples[f'{name}_count{{method="{method}"}}']
            assert count > 0, (name, method)
            assert samples[f'{name}_bucket{{le="+Inf",method="{method}"}}'] == count
            assert f'{name}_bucket{{le="0.00015000000000000001",method="{method}"}}' in samples
            assert samples[f'{name}_sum{{method="{method}"}}'] > 0
    for method in METHODS:
        steps = samples[f'tgi_batch_inference_count{{method="{method}"}}']
        assert samples[f'tgi_batch_inference_success{{method="{method}"}}'] == steps
        assert samples[f'tgi_batch_inference_failure{{method="{method}"}}'] == 0
        assert samples[f'tgi_batch_inference_duration_count{{method="{method}"}}'] == steps
        # A step takes at least its runner call.
        total = samples[f'tgi_batch_inference_duration_sum{{method="{method}"}}']
        assert total >= samples[f'tgi_batch_forward_duration_sum{{method="{method}"}}']


def test_concat_of_a_prefill_into_a_running_batch(samples: dict[str, float]) -> None:
    assert samples['tgi_batch_concat_duration_count{method="decode"}'] == 1
    assert samples['tgi_batch_concat{reason="backpressure"}'] == 1
    assert sum(k.startswith("tgi_batch_concat_duration_bucket{") for k in samples) == 36


def test_next_size_is_each_admitted_batch(samples: dict[str, float]) -> None:
    buckets = [k for k in samples if k.startswith("tgi_batch_next_size_bucket{")]
    assert len(buckets) == 1025  # TGI's 1 to 1024, and +Inf
    # Three requests, each admitted alone by its own prefill.
    assert samples["tgi_batch_next_size_count"] == 3
    assert samples["tgi_batch_next_size_sum"] == 3
    assert samples['tgi_batch_next_size_bucket{le="1.0"}'] == 3
    assert samples['tgi_batch_inference_success{method="prefill"}'] == 3


def test_skipped_tokens_count_every_token_and_skip_none(samples: dict[str, float]) -> None:
    generated = samples["tgi_request_generated_tokens_sum"]
    assert generated == 3 + 24 + 2
    assert samples["tgi_request_skipped_tokens_count"] == generated
    assert samples['tgi_request_skipped_tokens_bucket{le="0.0"}'] == generated
    assert samples["tgi_request_skipped_tokens_sum"] == 0


def test_every_worker_shows_the_same_engine_values(
    harness: Harness, samples: dict[str, float]
) -> None:
    engine_wide = [k for k in samples if k.startswith(("tgi_batch_", "tgi_request_skipped"))]
    first = scrape(harness.client())
    second = scrape(harness.client())
    assert engine_wide and all(first[k] == second[k] == samples[k] for k in engine_wide)
