"""``GET /docs`` (Swagger UI over the spec) and ``GET /api-doc/openapi.json`` (the spec).

Swagger UI's script and style come from the ``swagger-ui-bundle`` package and are served
here under ``/docs/static/`` (``SwaggerAssets``), so the page works on a cluster without
internet access: it names no other host, and its validator badge (a call to
validator.swagger.io) is turned off.
"""

from __future__ import annotations

import functools
from pathlib import Path

import falcon
import falcon.asgi
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

__all__ = ["ASSETS_PATH", "OPENAPI_PATH", "OpenApiDocument", "SwaggerAssets", "SwaggerUi"]

OPENAPI_PATH = "/api-doc/openapi.json"
ASSETS_PATH = "/docs/static/{name}"
_ASSETS_URL = "/docs/static/"

# The bundle's files the page loads, with their types; nothing else is served.
_ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Text Generation Inference API</title>
  <link rel="stylesheet" href="{assets}swagger-ui.css">
  <link rel="icon" type="image/png" href="{assets}favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{assets}swagger-ui-bundle.js"></script>
  <script>
    window.onload = () => {{
      window.ui = SwaggerUIBundle({{
        url: "{spec}", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null
      }});
    }};
  </script>
</body>
</html>
"""


class SwaggerUi:
    """``GET /docs``: the Swagger UI page."""

    def __init__(self) -> None:
        self._page = _PAGE.format(assets=_ASSETS_URL, spec=OPENAPI_PATH).encode()

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.data = self._page


class SwaggerAssets:
    """``GET /docs/static/{name}``: the page's files from ``swagger-ui-bundle``."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str) -> None:
        if name not in _ASSETS:
            raise falcon.HTTPNotFound()
        resp.content_type = _ASSETS[name]
        resp.data = _read_asset(name)


@functools.cache
def _read_asset(name: str) -> bytes:
    """One of ``_ASSETS``, read once per process (about 1 MB in all)."""
    return (Path(str(swagger_ui_path)) / name).read_bytes()


class OpenApiDocument:
    """``GET /api-doc/openapi.json``: the encoded document, built once."""

    def __init__(self, document: bytes) -> None:
        self._document = document

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._document
