"""Mllama (Llama 3.2 Vision): a Llama whose cross-attention layers attend to the image.

Its language model's cross-attention reads the vision tower's states at every step, which
the paged text model does not fit, so transformers serves the whole checkpoint, recomputed
every step (``tgi_hpu_kernels.models.transformers_recompute``): ``family.py`` says so,
``prompt.py`` (front end, torch-free) puts one ``<|image|>`` token per image in the prompt,
``images.py`` (engine) gives the model its pixels and cross-attention mask.
"""
