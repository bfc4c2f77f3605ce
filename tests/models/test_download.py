"""The download engine against a local server: ranges, resume, retries, no-Range servers, wrong bytes."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from worker.config import Settings
from worker.errors import JobCancelled, ModelDownloadFailed, UrlNotAllowed
from worker.models import policy
from worker.models.download import HashMismatch, Result, Tuning, download, part_info, probe
from worker.models.volume import state_path
from worker.netsafe import make_session

from .conftest import FAST_TUNING
from .fileserver import FileServer, model_bytes

SIZE = 1_500_000
BLOCK = FAST_TUNING.block_bytes
CUT = 50_000


def fetch(url: str, part: Path, settings: Settings, tuning: Tuning = FAST_TUNING, **kwargs: object) -> Result:
    with make_session(allow_private=True) as session:
        opener = policy.make_opener(url, field="vae_url", settings=settings, session=session)
        return download(
            opener,
            part,
            label="vae_url",
            source="test",
            max_bytes=policy.max_bytes(settings),
            tuning=tuning,
            **kwargs,  # type: ignore[arg-type]
        )


def ranges(server: FileServer, path: str) -> list[tuple[int, int]]:
    """The byte ranges requested (inclusive ends), probe requests left out."""
    found = []
    for hit in server.requests(path):
        assert hit.range is not None
        first, _, last = hit.range.removeprefix("bytes=").partition("-")
        found.append((int(first), int(last) if last else SIZE - 1))
    return found


def test_parallel_ranges_produce_the_exact_file(
    server: FileServer, settings: Settings, tmp_path: Path
) -> None:
    data = model_bytes(SIZE, seed=1)
    url = server.add("/m.safetensors", data, throttle_bps=3e6)
    part = tmp_path / ".m.part"
    result = fetch(url, part, settings, expected_sha256=hashlib.sha256(data).hexdigest())
    assert part.read_bytes() == data
    assert result.size == SIZE and result.sha256 == hashlib.sha256(data).hexdigest()
    assert len(server.requests("/m.safetensors")) >= 4
    assert all(h.status == 206 for h in server.requests("/m.safetensors"))
    assert not state_path(part).exists()


def test_a_cut_transfer_is_resumed_within_the_call(
    server: FileServer, settings: Settings, tmp_path: Path
) -> None:
    data = model_bytes(SIZE, seed=2)
    url = server.add("/m.safetensors", data, cut_after=CUT, cuts=1)
    part = tmp_path / ".m.part"
    fetch(url, part, settings, replace(FAST_TUNING, connections=1))
    assert part.read_bytes() == data
    assert server.sent("/m.safetensors") == SIZE  # no byte was sent twice
    asked = ranges(server, "/m.safetensors")
    cut = next(i for i, h in enumerate(server.requests()) if h.sent == CUT)
    assert asked[cut + 1] == (asked[cut][0] + CUT, asked[cut][1])  # the retry asks for the rest only


def test_a_failed_transfer_resumes_later_with_only_the_missing_bytes(
    server: FileServer, settings: Settings, tmp_path: Path
) -> None:
    data = model_bytes(SIZE, seed=3)
    url = server.add("/m.safetensors", data, cut_after=CUT, cuts=1)
    part = tmp_path / ".m.part"
    one_try = replace(FAST_TUNING, connections=1, max_attempts=1)
    with pytest.raises(ModelDownloadFailed, match="the transfer failed"):
        fetch(url, part, settings, one_try)
    info = part_info(part, "test")
    assert info is not None and info.on_disk == server.sent() and not info.active
    assert 0 < info.on_disk < SIZE
    before = server.sent()
    result = fetch(url, part, settings, one_try, expected_sha256=hashlib.sha256(data).hexdigest())
    assert server.sent() - before == SIZE - info.on_disk
    assert result.fetched == SIZE - info.on_disk
    assert min(a for a, _ in ranges(server, "/m.safetensors")[len(server.requests()) - 1 :]) >= info.on_disk
    assert part.read_bytes() == data


def test_a_parallel_resume_asks_only_for_missing_ranges(
    server: FileServer, settings: Settings, tmp_path: Path
) -> None:
    data = model_bytes(SIZE, seed=4)
    url = server.add("/m.safetensors", data, throttle_bps=2e6, cut_after=CUT, cuts=1)
    part = tmp_path / ".m.part"
    one_try = replace(FAST_TUNING, max_attempts=1)
    with pytest.raises(ModelDownloadFailed):
        fetch(url, part, settings, one_try)
    state = __import__("json").loads(state_path(part).read_text())
    missing = [tuple(r) for r in state["remaining"]]
    assert 0 < sum(b - a for a, b in missing) < SIZE
    first_hit = len(server.requests())
    fetch(url, part, settings, one_try)
    assert part.read_bytes() == data
    for hit in server.requests()[first_hit:]:
        first, _, last = (hit.range or "").removeprefix("bytes=").partition("-")
        end = int(last) + 1 if last else SIZE
        assert any(a <= int(first) and end <= b for a, b in missing), (hit.range, missing)


def test_a_server_without_range_support_gets_one_stream(
    server: FileServer, settings: Settings, tmp_path: Path
) -> None:
    data = model_bytes(SIZE, seed=5)
    url = server.add("/m.safetensors", data, ranges=False)
    part = tmp_path / ".m.part"
    fetch(url, part, settings)
    assert part.read_bytes() == data
    assert [h.status for h in server.requests()] == [200]


def test_without_range_support_a_cut_stream_starts_again(
    server: FileServer, settings: Settings, tmp_path: Path
) -> None:
    data = model_bytes(SIZE, seed=6)
    url = server.add("/m.safetensors", data, ranges=False, cut_after=CUT, cuts=1)
    part = tmp_path / ".m.part"
    result = fetch(url, part, settings)
    assert part.read_bytes() == data and result.sha256 == hashlib.sha256(data).hexdigest()
    assert server.sent() == SIZE + CUT


def test_wrong_bytes_raise_a_hash_mismatch(server: FileServer, settings: Settings, tmp_path: Path) -> None:
    data = model_bytes(SIZE, seed=7)
    url = server.add("/m.safetensors", data, wrong=True)
    with pytest.raises(HashMismatch) as info:
        fetch(url, tmp_path / ".m.part", settings, expected_sha256=hashlib.sha256(data).hexdigest())
    assert "sha256" in str(info.value) and "did not match" in str(info.value)


def test_a_size_other_than_expected_is_refused_before_the_body(
    server: FileServer, settings: Settings, tmp_path: Path
) -> None:
    url = server.add("/m.safetensors", model_bytes(SIZE), throttle_bps=1e6)
    with pytest.raises(ModelDownloadFailed, match=f"{SIZE} bytes, but 1000 bytes were expected"):
        fetch(url, tmp_path / ".m.part", settings, expected_size=1000)
    assert server.sent() < SIZE // 4


def test_the_size_cap_holds_even_without_content_length(
    server: FileServer, settings: Settings, tmp_path: Path
) -> None:
    url = server.add("/m.safetensors", model_bytes(SIZE))
    small = settings.model_copy(update={"max_model_gb": SIZE / 2 / 1e9})
    with pytest.raises(UrlNotAllowed, match="MAX_MODEL_GB"):
        fetch(url, tmp_path / ".m.part", small)


def test_server_errors_are_retried_and_client_errors_are_not(
    server: FileServer, settings: Settings, tmp_path: Path
) -> None:
    data = model_bytes(SIZE, seed=8)
    url = server.add("/m.safetensors", data, statuses=[503, 500])
    fetch(url, tmp_path / ".a.part", settings, replace(FAST_TUNING, connections=1))
    assert (tmp_path / ".a.part").read_bytes() == data
    url = server.add("/gated.safetensors", data, statuses=[403])
    with pytest.raises(ModelDownloadFailed, match="HF_TOKEN or CIVITAI_TOKEN"):
        fetch(url, tmp_path / ".b.part", settings)
    with pytest.raises(ModelDownloadFailed, match="not found"):
        fetch(server.url("/nothing"), tmp_path / ".c.part", settings)


def test_retries_are_bounded(server: FileServer, settings: Settings, tmp_path: Path) -> None:
    url = server.add("/m.safetensors", model_bytes(SIZE), statuses=[500] * 10)
    with pytest.raises(ModelDownloadFailed, match="HTTP 500"):
        fetch(url, tmp_path / ".m.part", settings)
    assert len(server.requests()) == FAST_TUNING.max_attempts


def test_redirects_are_followed_and_checked(server: FileServer, settings: Settings, tmp_path: Path) -> None:
    data = model_bytes(SIZE, seed=9)
    server.add("/files/m.safetensors", data)
    url = server.redirect("/resolve/m.safetensors", server.url("/files/m.safetensors"))
    fetch(url, tmp_path / ".m.part", settings)
    assert (tmp_path / ".m.part").read_bytes() == data
    assert len(server.requests("/resolve/m.safetensors")) == 1  # later blocks go straight to the file
    assert len(server.requests("/files/m.safetensors")) >= SIZE // BLOCK
    elsewhere = server.redirect("/away", f"http://localhost:{server.port}/files/m.safetensors")
    with pytest.raises(UrlNotAllowed, match="'localhost' is not allowed"):
        fetch(elsewhere, tmp_path / ".n.part", settings)
    assert not any(h.path == "/files/m.safetensors" for h in server.requests()[-1:])
    https_only = server.redirect("/plain", "ftp://127.0.0.1/m.safetensors")
    with pytest.raises(UrlNotAllowed):
        fetch(https_only, tmp_path / ".o.part", settings)


def test_cancel_stops_and_keeps_the_part_for_later(
    server: FileServer, settings: Settings, tmp_path: Path
) -> None:
    url = server.add("/m.safetensors", model_bytes(SIZE), throttle_bps=1e6)
    cancel = threading.Event()
    seen: list[int] = []

    def progress(done: int, total: int | None) -> None:
        seen.append(done)
        if done > 0:
            cancel.set()

    part = tmp_path / ".m.part"
    with pytest.raises(JobCancelled, match="resumes"):
        fetch(url, part, settings, progress=progress, should_stop=cancel.is_set)
    info = part_info(part, "test")
    assert info is not None and 0 < info.on_disk < SIZE
    assert seen


def test_an_expired_cdn_address_is_resolved_again(server: FileServer, settings: Settings) -> None:
    server.add("/files/m.safetensors", model_bytes(SIZE, seed=10))
    url = server.redirect("/resolve/m.safetensors", server.url("/files/m.safetensors"))
    with make_session(allow_private=True) as session:
        opener = policy.make_opener(url, field="vae_url", settings=settings, session=session)
        opener({"Range": "bytes=0-9"}).close()
        server.resources["/files/m.safetensors"].statuses = [403]
        response = opener({"Range": "bytes=10-19"})
        assert response.status_code == 206 and response.content == model_bytes(SIZE, seed=10)[10:20]
    assert [(h.path, h.status) for h in server.requests()] == [
        ("/resolve/m.safetensors", 302),
        ("/files/m.safetensors", 206),
        ("/files/m.safetensors", 403),
        ("/resolve/m.safetensors", 302),
        ("/files/m.safetensors", 206),
    ]


def test_blocks_are_handed_out_in_order_within_the_window() -> None:
    from worker.models.download import _Piece, _Plan

    plan = _Plan([(0, 1000)], total=1000, block=100, min_piece=10, window=300, connections=2)

    def finish(piece: _Piece | None) -> None:
        assert piece is not None
        _, count = plan.claim(piece, piece.end - piece.pos)
        plan.commit(piece, count)

    def span(piece: _Piece | None) -> tuple[int, int]:
        assert piece is not None
        return piece.pos, piece.end

    taken = [plan.take() for _ in range(3)]
    assert [span(p) for p in taken] == [(0, 100), (100, 200), (200, 300)]
    assert plan.take(stopping=lambda: True) is None  # the next block is past the window: it waits
    finish(taken[1])
    assert plan.take(stopping=lambda: True) is None  # the prefix on disk has not moved
    finish(taken[0])
    fourth = plan.take()
    assert span(fourth) == (300, 400)
    assert plan.remaining()[0] == (200, 300)


def test_the_last_block_is_shared_by_idle_connections() -> None:
    from worker.models.download import _Plan

    plan = _Plan([(0, 100)], total=100, block=100, min_piece=3, window=100, connections=2)
    blocks = [plan.take() for _ in range(8)]  # four blocks per connection, so that the hash keeps up
    assert [(p.pos, p.end) for p in blocks if p] == [(i, min(i + 13, 100)) for i in range(0, 100, 13)]
    spare = plan.take()
    assert spare is not None and (spare.pos, spare.end) == (6, 13)  # half of the first largest in flight
    alone = _Plan([(0, 100)], total=100, block=100, min_piece=10, window=100, connections=1)
    assert alone.take() is not None and alone.take() is None


@pytest.mark.parametrize(
    ("etag", "announced"),
    [
        ('"{sha}"', True),
        ('W/"{sha}"', True),
        ("{upper}", True),
        ('"{git}"', False),  # a git blob's sha1, as for a file not in LFS
        ("", False),
    ],
)
def test_what_the_probe_reads_from_the_redirect(
    server: FileServer, settings: Settings, etag: str, announced: bool
) -> None:
    data = model_bytes(SIZE, seed=9)
    digest = hashlib.sha256(data).hexdigest()
    header = etag.format(sha=digest, upper=digest.upper(), git="a" * 40)
    linked = {"X-Linked-Etag": header, "X-Linked-Size": str(SIZE * 3)} if header else {}
    url = server.hub_file("/org/repo/resolve/main/p.safetensors", data, announce=linked)
    with make_session(allow_private=True) as session:
        opener = policy.make_opener(url, field="vae_url", settings=settings, session=session)
        remote = probe(opener, label="vae_url")
    assert remote.sha256 == (digest if announced else None)
    assert remote.total == SIZE  # the answer's own Content-Range wins over X-Linked-Size
    assert remote.final_url == server.url("/cdn/org/repo/resolve/main/p.safetensors")


def test_the_announced_size_stands_in_for_a_missing_length(server: FileServer, settings: Settings) -> None:
    data = model_bytes(SIZE, seed=10)
    url = server.hub_file("/org/repo/resolve/main/q.safetensors", data, ranges=False, content_length=False)
    with make_session(allow_private=True) as session:
        opener = policy.make_opener(url, field="vae_url", settings=settings, session=session)
        remote = probe(opener, label="vae_url")
    assert (remote.total, remote.ranged) == (SIZE, False)
