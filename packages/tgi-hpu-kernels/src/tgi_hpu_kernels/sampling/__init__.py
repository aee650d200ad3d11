"""Batched, per-sequence, seeded sampling on the device (TGI's next-token chooser).

``Sampler`` keeps each sequence's sampling parameters, token history (for penalties) and RNG
position; ``Sampler.sample`` turns a batch of logits into one token per sequence with its
logprob and top tokens; ``Sampler.prompt_logprobs`` scores a prompt for
``decoder_input_details``.
"""

from tgi_hpu_kernels.sampling.sampler import Sampler, SampleResult

__all__ = ["SampleResult", "Sampler"]
