"""netsafe's redirect handling against a local HTTP server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.httpserver import HttpServer, Route
from worker import netsafe
from worker.errors import UrlNotAllowed
from worker.media import ImageLimits, fetch_url


@pytest.fixture(scope="module")
def srv() -> Iterator[HttpServer]:
    with HttpServer() as server:
        yield server


def open_local(srv: HttpServer, path: str) -> bytes:
    session = netsafe.make_session(allow_private=True)
    with netsafe.open_checked(
        session, srv.url(path), field="image_url", timeout=(2, 2), allow_private=True
    ) as response:
        return response.content


@pytest.mark.parametrize("location", [None, "", "  "])
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_without_a_location_is_its_own_error(
    srv: HttpServer, status: int, location: str | None
) -> None:
    path = f"/hop-{status}-{len(location) if location is not None else 'none'}"
    srv.routes[path] = Route(status=status, headers={} if location is None else {"Location": location})
    asked = len(srv.hits())
    with pytest.raises(UrlNotAllowed) as caught:
        open_local(srv, path)
    message = str(caught.value)
    assert f"{srv.url(path)} answered {status} redirect without a Location header" in message
    assert "too many redirects" not in message
    assert caught.value.details == [{"field": "image_url", "url": srv.url(path)}]
    assert [hit.path for hit in srv.hits()[asked:]] == [path]


def test_redirects_are_followed_and_a_loop_is_too_many(srv: HttpServer) -> None:
    srv.routes["/to-file"] = Route(status=302, headers={"Location": "/file"})
    srv.routes["/file"] = Route(body=b"bytes")
    srv.routes["/loop"] = Route(status=307, headers={"Location": "/loop"})
    assert open_local(srv, "/to-file") == b"bytes"
    with pytest.raises(UrlNotAllowed, match=r"too many redirects \(more than 5\)"):
        open_local(srv, "/loop")


def test_the_client_is_told_of_the_missing_location(srv: HttpServer) -> None:
    limits = ImageLimits(max_bytes=1 << 20, max_pixels=10**6, allow_private_urls=True)
    srv.routes["/image-hop"] = Route(status=302)
    with pytest.raises(UrlNotAllowed) as caught:
        fetch_url(srv.url("/image-hop"), field="image_url", limits=limits)
    assert caught.value.to_result()["error"] == (
        f"url_not_allowed: image_url: {srv.url('/image-hop')} answered 302 redirect without a Location "
        "header; give the file's direct URL instead"
    )


def test_the_redirects_stay_in_the_history_with_their_headers(srv: HttpServer) -> None:
    srv.routes["/resolve/m"] = Route(status=302, headers={"Location": "/hop/m", "X-Linked-Etag": '"abc"'})
    srv.routes["/hop/m"] = Route(status=307, headers={"Location": "/cdn/m"})
    srv.routes["/cdn/m"] = Route(body=b"bytes")
    session = netsafe.make_session(allow_private=True)
    with netsafe.open_checked(
        session, srv.url("/resolve/m"), field="vae_url", timeout=(2, 2), allow_private=True
    ) as response:
        assert response.content == b"bytes"
        assert [(hop.status_code, hop.url) for hop in response.history] == [
            (302, srv.url("/resolve/m")),
            (307, srv.url("/hop/m")),
        ]
        assert response.history[0].headers["X-Linked-Etag"] == '"abc"'
