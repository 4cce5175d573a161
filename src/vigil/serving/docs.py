"""API docs that work with no internet: Swagger UI served from files installed with vigil.

FastAPI's default ``/docs`` page loads Swagger UI's script and style sheet from a CDN, which a
line-side box without internet cannot reach. ``mount_offline_docs(app)`` serves the same page
with the assets of the ``fastapi-offline`` package (Swagger UI 5, which renders OpenAPI 3.1)
under ``/docs/static/``; the page, the assets and ``/openapi.json`` come from this service alone.
The app must be created with ``docs_url=None``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_PATH = "/docs"
STATIC_PATH = "/docs/static"


def swagger_assets() -> Path:
    """The folder holding ``swagger-ui-bundle.js``, ``swagger-ui.css`` and ``favicon.png``."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def mount_offline_docs(app: FastAPI) -> None:
    """Add ``GET /docs`` (Swagger UI) and its static assets, all served locally."""
    app.mount(STATIC_PATH, StaticFiles(directory=swagger_assets()), name="docs-static")

    @app.get(DOCS_PATH, include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{STATIC_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC_PATH}/favicon.png",
        )
