"""The chat page at `/`: its HTML and static assets, shipped inside the package.

Plain HTML, CSS and JavaScript from `static/`: nothing is fetched from
elsewhere and nothing is built. The page's links carry the app's route prefix
(Serve's `root_path`), so it also works when the app is not served at `/`.
"""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path

from fastapi import HTTPException
from fastapi.responses import FileResponse, HTMLResponse

STATIC_DIR = Path(__file__).parent / "static"
BASE_MARKER = "__RAYCHAT_BASE__"
# The files `GET /static/{name}` serves, with their media types; nothing else is served.
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
# The page talks to its own origin only; the token it keeps is never handed to other code.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
ASSET_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


@cache
def _index_template() -> str:
    return (STATIC_DIR / "index.html").read_text(encoding="utf-8")


def index_page(root_path: str) -> HTMLResponse:
    """The chat page, its asset and API links under `root_path` (the app's route prefix)."""
    base = html.escape(root_path.rstrip("/"), quote=True)
    return HTMLResponse(_index_template().replace(BASE_MARKER, base), headers=PAGE_HEADERS)


def asset(name: str) -> FileResponse:
    """One of the page's static files; 404 for any other name."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail="no such asset")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=ASSET_HEADERS)
