"""``/docs`` works without internet: the page and every file it loads come from the app."""

from __future__ import annotations

from html.parser import HTMLParser

import falcon.testing
import pytest


class References(HTMLParser):
    """Every ``src``/``href`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def test_the_page_and_every_file_it_loads_come_from_the_app(
    client: falcon.testing.TestClient,
) -> None:
    page = client.simulate_get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "//" not in page.text, "the page names a host (http://, https:// or //)"
    parser = References()
    parser.feed(page.text)
    assert len(parser.urls) == 3  # style, icon, script
    types = set()
    for url in parser.urls:
        asset = client.simulate_get(url)
        assert asset.status_code == 200 and len(asset.content) > 500, url
        types.add(asset.headers["content-type"].split(";")[0])
    assert types == {"text/css", "text/javascript", "image/png"}
    assert '"/api-doc/openapi.json"' in page.text
    assert client.simulate_get("/api-doc/openapi.json").status_code == 200


@pytest.mark.parametrize(
    "path", ["/docs/static/index.html", "/docs/static/..%2F__init__.py", "/docs/static/"]
)
def test_only_the_pages_files_are_served(client: falcon.testing.TestClient, path: str) -> None:
    assert client.simulate_get(path).status_code == 404
