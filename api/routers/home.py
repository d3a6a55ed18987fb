"""``/``: a small HTML page pointing at the API (the portal proper comes later)."""

from __future__ import annotations

from html import escape

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from api.dependencies import BackendName

router = APIRouter(tags=["portal"])

#: (path, what it answers); ``{…}`` placeholders are shown as written.
_LINKS = (
    ("/docs", "OpenAPI documentation: every route, tried from the browser"),
    ("/api/v1/status", "backend and archive size"),
    ("/api/v1/cone?ra=197.6&dec=7.3&radius=1800", "cone search (radius in arcsec), JSON"),
    ("/api/v1/objects/{object_id}", "one object, its latest magnitudes and links"),
    ("/api/v1/objects/{object_id}/lightcurve", "its detections and forced photometry"),
    ("/api/v1/objects/{object_id}/cutouts/{kind}", "a FITS cutout (science, template, "
     "difference) of its latest alert, or of ?source_id="),
    ("/metrics", "Prometheus metrics"),
)

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Lanner alert broker</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 48rem; margin: 2rem auto; padding: 0 1rem;
       line-height: 1.5; }}
code {{ background: #f3f3f3; padding: 0 .2rem; }}
label {{ margin-right: .8rem; }}
input {{ width: 7rem; }}
</style>
</head>
<body>
<h1>Lanner</h1>
<p>An alert-stream broker with a catalog archive for Rubin/LSST (and ZTF) alerts.
Backend: <strong>{backend}</strong>.</p>
<h2>Cone search</h2>
<form action="{cone}" method="get">
<label>ra (deg) <input name="ra" value="197.6" required></label>
<label>dec (deg) <input name="dec" value="7.3" required></label>
<label>radius (arcsec) <input name="radius" value="1800" required></label>
<input type="hidden" name="catalog" value="objects">
<button type="submit">search</button>
</form>
<h2>API</h2>
<ul>
{links}
</ul>
</body>
</html>
"""


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def home(request: Request, backend: BackendName) -> HTMLResponse:
    root = str(request.scope.get("root_path", "")).rstrip("/")
    items = []
    for path, text in _LINKS:
        shown = escape(path)
        entry = (f"<code>{shown}</code>" if "{" in path
                 else f'<a href="{escape(root + path)}"><code>{shown}</code></a>')
        items.append(f"<li>{entry}: {escape(text)}</li>")
    return HTMLResponse(_PAGE.format(backend=escape(backend), cone=escape(root + "/api/v1/cone"),
                                     links="\n".join(items)))
