"""``GET /docs`` (Swagger UI over the spec) and ``GET /api-doc/openapi.json`` (the spec).

The UI page loads Swagger UI's script and style from a CDN (they are not bundled), so it
needs a browser with network access; the spec itself is served from memory.
"""

from __future__ import annotations

import falcon
import falcon.asgi

__all__ = ["OPENAPI_PATH", "OpenApiDocument", "SwaggerUi"]

OPENAPI_PATH = "/api-doc/openapi.json"
SWAGGER_UI_VERSION = "5.17.14"

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Text Generation Inference API</title>
  <link rel="stylesheet" href="https://unpkg.com/swagger-ui-dist@{version}/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="https://unpkg.com/swagger-ui-dist@{version}/swagger-ui-bundle.js"></script>
  <script>
    window.onload = () => {{
      window.ui = SwaggerUIBundle({{url: "{spec}", dom_id: "#swagger-ui", deepLinking: true}});
    }};
  </script>
</body>
</html>
"""


class SwaggerUi:
    """``GET /docs``: the Swagger UI page."""

    def __init__(self) -> None:
        self._page = _PAGE.format(version=SWAGGER_UI_VERSION, spec=OPENAPI_PATH).encode()

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = falcon.MEDIA_HTML
        resp.data = self._page


class OpenApiDocument:
    """``GET /api-doc/openapi.json``: the encoded document, built once."""

    def __init__(self, document: bytes) -> None:
        self._document = document

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._document
