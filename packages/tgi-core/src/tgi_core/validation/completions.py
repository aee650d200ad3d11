"""The mappings of OpenAI legacy completions and of ``/vertex`` to generate requests.

Each produces ``GenerateInput``s for ``validate_generate``; the route-level refusals TGI
makes before validation (a ``suffix``, too many prompts, no vertex instance) are raised
here as their own ``TGIError`` subclasses.
"""

from __future__ import annotations

from tgi_core.api.chat import ChatRequest
from tgi_core.api.completions import CompletionRequest
from tgi_core.api.generate import GenerateParameters
from tgi_core.api.info import VertexInstance, VertexRequest
from tgi_core.errors import (
    BatchSizeExceededError,
    SuffixNotSupportedError,
    VertexEmptyInstancesError,
)
from tgi_core.settings.slices import ValidationLimits
from tgi_core.validation.chat import adapter_id_for
from tgi_core.validation.generate import GenerateInput

__all__ = ["completion_to_generate", "vertex_to_generate"]


def completion_to_generate(
    request: CompletionRequest, limits: ValidationLimits
) -> list[GenerateInput]:
    """One generate request per prompt, as TGI builds them.

    Temperature exactly 0 is greedy, anything else (absent included) samples; ``details``
    is on; ``decoder_input_details`` is on unless streaming; special tokens are added.

    Raises:
        SuffixNotSupportedError: the request has a ``suffix``.
        BatchSizeExceededError: more prompts than ``limits.max_client_batch_size``.
    """
    if request.suffix is not None:
        raise SuffixNotSupportedError()
    prompts = request.prompts
    if len(prompts) > limits.max_client_batch_size:
        raise BatchSizeExceededError(limits.max_client_batch_size)
    greedy = request.temperature == 0.0
    parameters = GenerateParameters(
        temperature=None if greedy else request.temperature,
        repetition_penalty=request.repetition_penalty,
        frequency_penalty=request.frequency_penalty,
        top_p=request.top_p,
        do_sample=not greedy,
        max_new_tokens=request.max_tokens,
        stop=request.stop_sequences,
        details=True,
        decoder_input_details=not request.stream,
        seed=request.seed,
        adapter_id=adapter_id_for(request.model, limits.adapter_ids),
    )
    return [GenerateInput(inputs=prompt, parameters=parameters) for prompt in prompts]


def vertex_to_generate(request: VertexRequest) -> list[GenerateInput | ChatRequest]:
    """Map each ``/vertex`` instance: a generate instance becomes a sampling request that
    honours only ``max_new_tokens`` and ``seed``; a chat instance is returned as is (the
    server templates it and calls ``chat_to_generate``).

    Raises:
        VertexEmptyInstancesError: ``instances`` is empty.
    """
    if not request.instances:
        raise VertexEmptyInstancesError()
    return [
        _vertex_instance(item) if isinstance(item, VertexInstance) else item
        for item in request.instances
    ]


def _vertex_instance(instance: VertexInstance) -> GenerateInput:
    given = instance.parameters or GenerateParameters()
    parameters = GenerateParameters(
        do_sample=True,
        max_new_tokens=given.max_new_tokens,
        seed=given.seed,
        details=True,
        decoder_input_details=True,
    )
    return GenerateInput(inputs=instance.inputs, parameters=parameters)
