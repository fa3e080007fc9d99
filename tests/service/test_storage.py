"""service.storage: atomic writes, reads and listings on local paths, file:// and memory:// URIs."""

from __future__ import annotations

import os
import threading

import pytest

from service import storage


@pytest.fixture(params=["path", "file-uri"])
def base(request, tmp_path) -> str:
    """A storage base location on the local disk, as a plain path or as a file:// URI."""
    root = tmp_path / "store"
    return str(root) if request.param == "path" else root.as_uri()


def test_write_then_read_round_trips_and_creates_parent_dirs(base):
    location = storage.join(base, "job1", "checkpoints", "step-0000000512.tar.gz")
    storage.write_bytes_atomic(location, b"\x00archive\xff")
    assert storage.read_bytes(location) == b"\x00archive\xff"
    assert storage.exists(location)


def test_rewrite_replaces_the_whole_file(base):
    location = storage.join(base, "metrics.jsonl")
    storage.write_bytes_atomic(location, b"a much longer first version\n" * 10)
    storage.write_bytes_atomic(location, b"short\n")
    assert storage.read_bytes(location) == b"short\n"


def test_list_files_is_recursive_sorted_and_in_the_style_of_the_prefix(base):
    for name in ("b.txt", "a/2.tar.gz", "a/1.tar.gz"):
        storage.write_bytes_atomic(storage.join(base, "job", name), name.encode())
    listed = storage.list_files(storage.join(base, "job"))
    assert listed == [storage.join(base, "job", n) for n in ("a/1.tar.gz", "a/2.tar.gz", "b.txt")]
    assert [storage.read_bytes(loc) for loc in listed] == [b"a/1.tar.gz", b"a/2.tar.gz", b"b.txt"]


def test_missing_prefix_lists_empty_and_missing_file_raises(base):
    assert storage.list_files(storage.join(base, "nothing-here")) == []
    assert not storage.exists(storage.join(base, "nope.bin"))
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(base, "nope.bin"))


def test_local_write_leaves_no_temp_file_and_listing_skips_writes_in_progress(tmp_path):
    target = tmp_path / "ckpt.tar.gz"
    storage.write_bytes_atomic(str(target), b"done")
    assert sorted(os.listdir(tmp_path)) == ["ckpt.tar.gz"]
    (tmp_path / ".other.tar.gz.abc123.tmp").write_bytes(b"half")  # a writer that crashed mid-way
    assert storage.list_files(str(tmp_path)) == [str(target)]


def test_failed_local_write_keeps_the_old_content_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.tar.gz"
    storage.write_bytes_atomic(str(target), b"old")

    def crash(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(storage.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        storage.write_bytes_atomic(str(target), b"new")
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["ckpt.tar.gz"]


def test_concurrent_readers_never_see_a_partial_file(tmp_path):
    target = str(tmp_path / "big.bin")
    versions = [bytes([i]) * 2_000_000 for i in range(6)]
    storage.write_bytes_atomic(target, versions[0])
    seen: list[bytes] = []
    done = threading.Event()

    def read_until_done():
        while not done.is_set():
            data = storage.read_bytes(target)
            seen.append((len(data), data[:1], data[-1:]))

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        for data in versions[1:]:
            storage.write_bytes_atomic(target, data)
    finally:
        done.set()
        reader.join()
    whole = {(len(v), v[:1], v[-1:]) for v in versions}
    assert seen and all(pair in whole for pair in seen)


def test_file_uri_and_plain_path_name_the_same_file(tmp_path):
    storage.write_bytes_atomic((tmp_path / "x y.bin").as_uri(), b"spaces are quoted in URIs")
    assert (tmp_path / "x y.bin").read_bytes() == b"spaces are quoted in URIs"
    assert storage.local_path((tmp_path / "x y.bin").as_uri()) == tmp_path / "x y.bin"


def test_join_keeps_the_uri_scheme_and_refuses_climbing_out():
    assert storage.join("s3://bucket/prefix", "job", "ckpt.tar.gz") == "s3://bucket/prefix/job/ckpt.tar.gz"
    assert storage.join("/data", "job") == "/data/job"
    for bad in ("../etc/passwd", "/abs", "a/../../b"):
        with pytest.raises(ValueError, match="relative"):
            storage.join("/data", bad)


def test_scheme_and_locality():
    assert storage.scheme("s3://b/p") == "s3" and not storage.is_local("s3://b/p")
    assert storage.scheme("/a/b") == "" and storage.is_local("/a/b")
    assert storage.is_local("file:///a/b")
    with pytest.raises(ValueError, match="file:///abs/path"):
        storage.local_path("file://otherhost/a")


def test_unknown_scheme_says_what_to_install():
    with pytest.raises(storage.StorageUnavailable, match="nosuchfs://"):
        storage.write_bytes_atomic("nosuchfs://bucket/x", b"")


def test_memory_uri_through_fsspec():
    pytest.importorskip("fsspec")
    base = "memory://a2c-test-storage/run1"
    storage.write_bytes_atomic(storage.join(base, "checkpoints", "step-1.tar.gz"), b"one")
    storage.write_bytes_atomic(storage.join(base, "checkpoints", "step-2.tar.gz"), b"two")
    storage.write_bytes_atomic(storage.join(base, "metrics.jsonl"), b"{}\n")
    assert storage.list_files(base) == [storage.join(base, "checkpoints", "step-1.tar.gz"),
                                        storage.join(base, "checkpoints", "step-2.tar.gz"),
                                        storage.join(base, "metrics.jsonl")]
    assert storage.read_bytes(storage.join(base, "checkpoints", "step-2.tar.gz")) == b"two"
    assert storage.exists(storage.join(base, "metrics.jsonl"))
    assert storage.list_files("memory://a2c-test-storage/none") == []
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(base, "missing"))


def test_json_lines_on_a_local_path_are_visible_at_once_and_keep_rewrites(tmp_path):
    log = storage.JsonLines(str(tmp_path / "run" / "metrics.jsonl"))
    for step in (1, 2, 3):
        log.append({"step": step})
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 3  # before any flush
    log.keep(lambda row: row["step"] <= 1)
    log.append({"step": 2, "again": True})
    log.close()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert lines == ['{"step": 1}', '{"step": 2, "again": true}']


def test_json_lines_on_an_object_store_appear_at_flush_and_continue_an_existing_file():
    pytest.importorskip("fsspec")
    location = "memory://a2c-test-storage/jsonl/events.jsonl"
    log = storage.JsonLines(location)
    log.append({"kind": "started"})
    assert not storage.exists(location)  # object stores cannot append: written at flush
    log.flush()
    assert storage.read_bytes(location) == b'{"kind": "started"}\n'
    log.close()
    again = storage.JsonLines(location)
    again.append({"kind": "resumed"})
    again.keep(lambda record: True)
    assert storage.read_bytes(location).decode().splitlines() == ['{"kind": "started"}', '{"kind": "resumed"}']


def test_open_read_streams_paths_and_uris(tmp_path):
    pytest.importorskip("fsspec")
    for location in (str(tmp_path / "a.bin"), "memory://a2c-test-storage/stream/a.bin"):
        storage.write_bytes_atomic(location, b"x" * 10_000)
        with storage.open_read(location) as stream:
            chunks = iter(lambda: stream.read(4096), b"")
            assert [len(c) for c in chunks] == [4096, 4096, 1808]
    with pytest.raises(FileNotFoundError):
        with storage.open_read("memory://a2c-test-storage/stream/missing.bin"):
            pass
