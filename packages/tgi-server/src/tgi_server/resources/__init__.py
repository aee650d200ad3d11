"""The app's resources, one module per concern; each parses, calls the pipeline, renders.

- ``generate``: ``POST /`` (and ``GET /``), ``/generate``, ``/generate_stream``
- ``chat``: ``/v1/chat/completions``; ``completions``: ``/v1/completions``
- ``tokenize``: ``/tokenize``, ``/chat_tokenize``
- ``vertex``: ``/vertex``; ``invocations``: ``/invocations`` (SageMaker)
- ``info``: ``/info``, ``/v1/models``; ``health``: ``/health``, ``/ping``
- ``metrics``: ``/metrics``; ``docs``: ``/docs``, ``/api-doc/openapi.json``

``Served`` holds what responses say about the served model.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Served"]


@dataclass(frozen=True, slots=True)
class Served:
    """What responses report about the deployment.

    ``system_fingerprint`` is ``<version>-<docker label or "native">``;
    ``default_return_full_text`` is ``POST /``'s default (true for text-generation models
    and models with no known pipeline tag, as TGI decides).
    """

    model_id: str
    compute_type: str
    system_fingerprint: str
    default_return_full_text: bool
