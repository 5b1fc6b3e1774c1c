"""The one way a backend URL is built, for the proxy and for the shadow alike."""

from __future__ import annotations

from collections.abc import Mapping

from yarl import URL

from shim.routes import Face


def backend_url(base_url: str, face: Face, params: Mapping[str, str], query: bytes) -> URL:
    """Configured base URL + the backend's path for the route + the client's raw query.

    Never the client's Host or absolute-form target: the shim cannot be pointed elsewhere.
    The path and query are passed on as the client sent them (`encoded=True`: no
    re-quoting). Example: `http://127.0.0.1:4110` + `/v1/items/{id}` with `{"id": "7"}` and
    `b"x=1"` is `http://127.0.0.1:4110/v1/items/7?x=1`.
    """
    text = base_url + face.render(params)
    if query:
        text += "?" + query.decode("latin-1")
    return URL(text, encoded=True)
