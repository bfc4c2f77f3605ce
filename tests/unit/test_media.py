"""Input images: sources, limits and content checks."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from tests.support.httpserver import HttpServer, Route, stub_resolver
from tests.support.images import (
    animated_gif,
    animated_png,
    animated_webp,
    data_uri,
    image_bytes,
    png_claiming,
)
from worker import netsafe
from worker.errors import ImageFetchFailed, InvalidImage, InvalidInput, UrlNotAllowed
from worker.media import (
    ImageLimits,
    check_image,
    decode_base64,
    fetch_url,
    read_source,
    read_volume_path,
)

MB = 1024 * 1024
LIMITS = ImageLimits(max_bytes=2 * MB, max_pixels=4096 * 4096, allow_private_urls=True)


@pytest.mark.parametrize(("fmt", "kind"), [("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp")])
def test_accepts_still_images_by_content(fmt: str, kind: str) -> None:
    image = check_image(image_bytes(fmt, (64, 96)), field="image_base64", max_pixels=10**6)
    assert (image.format, image.width, image.height) == (kind, 64, 96)


def test_lossless_webp_dimensions() -> None:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGB", (33, 17)).save(buf, "WEBP", lossless=True)
    image = check_image(buf.getvalue(), field="f", max_pixels=10**6)
    assert (image.width, image.height) == (33, 17)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"hello world, not an image", "not a PNG, JPEG or WebP"),
        (b"%PDF-1.4 ...", "not a PNG, JPEG or WebP"),
        (animated_gif(), "GIF"),
        (animated_webp(), "animated"),
        (animated_png(), "animated"),
        (image_bytes("PNG")[: len(image_bytes("PNG")) // 2], "truncated"),
        (image_bytes("JPEG")[:-200], "truncated"),
        (image_bytes("WEBP")[:-30], "truncated"),
        (png_claiming(20000, 20000), "20000x20000"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 10, "not a PNG, JPEG or WebP"),
        (image_bytes("BMP"), "is a BMP image"),
    ],
)
def test_refuses_bad_images(data: bytes, fragment: str) -> None:
    with pytest.raises(InvalidImage, match=fragment):
        check_image(data, field="image_base64", max_pixels=4096 * 4096)


def test_base64_raw_and_data_uri() -> None:
    png = image_bytes()
    assert decode_base64(base64.b64encode(png).decode(), field="f", max_bytes=MB) == png
    assert decode_base64(data_uri(png), field="f", max_bytes=MB) == png
    wrapped = base64.encodebytes(png).decode()  # with newlines
    assert decode_base64(wrapped, field="f", max_bytes=MB) == png
    unpadded = base64.b64encode(png).decode().rstrip("=")
    assert decode_base64(unpadded, field="f", max_bytes=MB) == png


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("data:text/html;base64,PGgxPg==", "type 'text/html'"),
        ("data:image/svg+xml;base64,PHN2Zz4=", r"type 'image/svg\+xml'"),
        ("data:image/png,rawtext", "without ';base64'"),
        ("data:garbage", "not a valid data URI"),
        ("!!!notbase64###", "not valid base64"),
    ],
)
def test_base64_refusals(value: str, fragment: str) -> None:
    with pytest.raises(InvalidImage, match=fragment):
        decode_base64(value, field="image_base64", max_bytes=MB)


def test_huge_base64_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("decoded anyway")

    monkeypatch.setattr(base64, "b64decode", boom)
    with pytest.raises(InvalidImage, match="too large"):
        decode_base64("A" * (4 * MB), field="image_base64", max_bytes=2 * MB)


def test_volume_paths(tmp_path: Path) -> None:
    root = tmp_path / "volume"
    (root / "inputs").mkdir(parents=True)
    png = image_bytes()
    (root / "inputs" / "a.png").write_bytes(png)
    (tmp_path / "secret.png").write_bytes(png)
    os.symlink(tmp_path / "secret.png", root / "inputs" / "link.png")
    os.symlink(root / "inputs" / "a.png", root / "inputs" / "inner_link.png")

    read = lambda value: read_volume_path(value, field="image_path", volume_root=root, max_bytes=MB)  # noqa: E731
    assert read("inputs/a.png") == png
    assert read(str(root / "inputs" / "a.png")) == png
    assert read("inputs/inner_link.png") == png
    for bad, fragment in [
        ("../secret.png", "inside the volume"),
        (str(tmp_path / "secret.png"), "inside the volume"),
        ("inputs/link.png", "inside the volume"),
        ("inputs/../../secret.png", "inside the volume"),
        ("inputs/missing.png", "no file"),
        ("inputs", "not a regular file"),
        ("inputs/a.png\x00.txt", "NUL"),
        ("/etc/passwd", "inside the volume"),
    ]:
        with pytest.raises(InvalidInput, match=fragment):
            read(bad)


def test_volume_file_over_the_cap(tmp_path: Path) -> None:
    (tmp_path / "big.png").write_bytes(b"\0" * 2048)
    with pytest.raises(InvalidImage, match="limit"):
        read_volume_path("big.png", field="image_path", volume_root=tmp_path, max_bytes=1024)


def test_fetch_url_from_a_local_server() -> None:
    png = image_bytes()
    with HttpServer() as srv:
        srv.routes["/a.png"] = Route(body=png, headers={"Content-Type": "image/png"})
        srv.routes["/moved"] = Route(status=302, headers={"Location": "/a.png"})
        srv.routes["/missing"] = Route(status=404)
        assert fetch_url(srv.url("/a.png?sig=secret"), field="image_url", limits=LIMITS) == png
        assert fetch_url(srv.url("/moved"), field="image_url", limits=LIMITS) == png
        with pytest.raises(ImageFetchFailed, match=r"HTTP 404") as info:
            fetch_url(srv.url("/missing?token=abc"), field="image_url", limits=LIMITS)
        assert "abc" not in str(info.value)


def test_fetch_url_size_caps() -> None:
    with HttpServer() as srv:
        srv.routes["/declared"] = Route(body=b"x" * 4096)
        srv.routes["/undeclared"] = Route(body=b"x" * 4096, headers={"Content-Length": "100"})
        small = ImageLimits(max_bytes=1024, max_pixels=10**6, allow_private_urls=True)
        with pytest.raises(InvalidImage, match="limit is"):
            fetch_url(srv.url("/declared"), field="image_url", limits=small)


def test_fetch_url_drip_hits_the_deadline() -> None:
    with HttpServer() as srv:
        srv.routes["/drip"] = Route(body=b"x" * 100, drip_delay_s=0.2)
        limits = ImageLimits(
            max_bytes=MB, max_pixels=10**6, allow_private_urls=True, read_timeout_s=5, deadline_s=0.5
        )
        with pytest.raises(ImageFetchFailed, match="took longer"):
            fetch_url(srv.url("/drip"), field="image_url", limits=limits)


def test_unreachable_url_is_a_fetch_error() -> None:
    with HttpServer() as srv:
        url = srv.url("/a.png")
    with pytest.raises(ImageFetchFailed, match="could not fetch"):
        fetch_url(url, field="image_url", limits=LIMITS)


PRIVATE = ImageLimits(max_bytes=MB, max_pixels=10**6, allow_private_urls=False)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/a.png",
        "http://0.0.0.0/a.png",
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/a.png",
        "http://172.16.0.1/a.png",
        "http://192.168.1.1/a.png",
        "http://[::1]/a.png",
        "http://[fc00::1]/a.png",
        "http://[fd12:3456::1]/a.png",
        "http://[::ffff:127.0.0.1]/a.png",
        "http://[::ffff:10.0.0.1]/a.png",
        "http://2130706433/a.png",
        "http://0x7f000001/a.png",
        "http://0177.0.0.1/a.png",
        "http://localhost/a.png",
    ],
)
def test_private_addresses_are_refused_with_the_real_resolver(url: str) -> None:
    with pytest.raises(UrlNotAllowed, match=r"non-public|could not be resolved"):
        fetch_url(url, field="image_url", limits=PRIVATE)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://example.com/"])
def test_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(UrlNotAllowed, match="must use"):
        fetch_url(url, field="image_url", limits=PRIVATE)


def test_redirect_to_a_private_address_is_refused() -> None:
    with HttpServer() as srv:
        srv.routes["/hop"] = Route(status=302, headers={"Location": "http://internal.test/secret"})
        resolver = stub_resolver({"public.test": "93.184.216.34", "internal.test": "10.0.0.5"})
        url = f"http://public.test:{srv.port}/hop"
        session = netsafe.make_session(allow_private=True)  # reach the local server; the policy still applies
        session.get = _routed(session.get, "public.test", "127.0.0.1")  # type: ignore[method-assign]
        with pytest.raises(UrlNotAllowed, match=r"internal.test.*non-public"):
            fetch_url(url, field="image_url", limits=PRIVATE, session=session, resolver=resolver)
        assert [hit.path for hit in srv.hits()] == ["/hop"]


def test_connection_to_a_private_peer_is_refused_after_dns() -> None:
    """A name that passes the DNS check but connects to a private address (DNS rebinding)."""
    with HttpServer() as srv:
        srv.routes["/a.png"] = Route(body=image_bytes())
        resolver = stub_resolver({"127.0.0.1": "93.184.216.34"})  # the check is fooled, the socket is not
        with pytest.raises(UrlNotAllowed, match="non-public"):
            fetch_url(srv.url("/a.png"), field="image_url", limits=PRIVATE, resolver=resolver)
        assert srv.hits() == []


def _routed(get, name: str, address: str):  # type: ignore[no-untyped-def]
    """Send requests for ``name`` to ``address`` (keeping the Host header), like a DNS answer would."""

    def routed(url: str, **kwargs):  # type: ignore[no-untyped-def]
        if f"//{name}:" in url:
            kwargs.setdefault("headers", {})["Host"] = name
            url = url.replace(f"//{name}:", f"//{address}:")
        return get(url, **kwargs)

    return routed


def test_read_source_reads_what_the_field_names(tmp_path: Path) -> None:
    png = image_bytes()
    assert read_source("end_image_base64", data_uri(png), LIMITS, tmp_path) == png
    (tmp_path / "end.png").write_bytes(png)
    assert read_source("end_image_path", "end.png", LIMITS, tmp_path) == png
    with pytest.raises(InvalidImage, match="end_image_base64"):
        data = read_source("end_image_base64", data_uri(b"nope"), LIMITS, tmp_path)
        check_image(data, field="end_image_base64", max_pixels=LIMITS.max_pixels)
