"""Swagger UI (``/docs``) and ReDoc (``/redoc``) from files shipped in a package, not from a CDN.

FastAPI's own pages load their JavaScript from jsDelivr, so behind a firewall or offline they are blank.
The ``fastapi-offline`` package ships the Swagger UI and ReDoc bundles; we serve its ``static`` folder and
FastAPI's page builders point at it (no Google fonts either).
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(fastapi_offline.__file__).resolve().parent / "static"
PREFIX = "/docs-static"


def install(app: FastAPI) -> None:
    """Add ``/docs``, ``/redoc`` and their static files; none of them is part of the OpenAPI document."""
    app.mount(PREFIX, StaticFiles(directory=STATIC), name="docs-static")
    title = f"{app.title} {app.version}"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{PREFIX}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{title} - ReDoc",
            redoc_js_url=f"{PREFIX}/redoc.standalone.js",
            redoc_favicon_url=f"{PREFIX}/favicon.png",
            with_google_fonts=False,
        )
