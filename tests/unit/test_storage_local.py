"""The local backend stays inside its root: every way out is refused with AccessDeniedError."""

from __future__ import annotations

from pathlib import Path

import pytest

from rstream.shared.errors import AccessDeniedError, PermanentError
from rstream.shared.storage import Storage, join
from tests.settings import make_settings


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_bytes(b"secret")
    return tmp_path / "root"


@pytest.fixture
def storage(root: Path) -> Storage:
    return Storage(make_settings(storage_root=str(root)))


@pytest.mark.parametrize("key", ["../outside/secret.txt", "a/../../outside/secret.txt",
                                 "./../outside/secret.txt"])
def test_dot_dot_keys_are_refused(storage: Storage, key: str) -> None:
    with pytest.raises(AccessDeniedError, match="outside the storage root"):
        storage.read(key)
    with pytest.raises(AccessDeniedError):
        storage.write(key, b"overwritten")
    with pytest.raises(AccessDeniedError):
        storage.delete(key)
    assert (storage.local.root.parent / "outside" / "secret.txt").read_bytes() == b"secret"


def test_absolute_paths_elsewhere_are_refused(storage: Storage, root: Path) -> None:
    secret = root.parent / "outside" / "secret.txt"
    with pytest.raises(AccessDeniedError, match="RSTREAM_STORAGE_ROOT"):
        storage.read(str(secret))
    with pytest.raises(AccessDeniedError):
        storage.write(str(root.parent / "outside" / "new.txt"), b"x")
    with pytest.raises(AccessDeniedError):
        list(storage.list(str(root.parent / "outside") + "/"))
    assert not (root.parent / "outside" / "new.txt").exists()


def test_a_root_that_is_a_prefix_of_another_directory_does_not_admit_it(
        tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root-other").mkdir()
    (tmp_path / "root-other" / "x").write_bytes(b"x")
    storage = Storage(make_settings(storage_root=str(tmp_path / "root")))
    with pytest.raises(AccessDeniedError):
        storage.read(str(tmp_path / "root-other" / "x"))


def test_file_uris_outside_the_root_are_refused(storage: Storage, root: Path) -> None:
    secret = root.parent / "outside" / "secret.txt"
    with pytest.raises(AccessDeniedError):
        storage.read(secret.as_uri())
    with pytest.raises(AccessDeniedError):
        storage.read(root.as_uri() + "/../outside/secret.txt")
    with pytest.raises(AccessDeniedError):
        storage.read("file:///etc/hostname")


def test_absolute_paths_and_file_uris_inside_the_root_are_served(
        storage: Storage, root: Path) -> None:
    storage.write("a/b.txt", b"inside")
    assert storage.read(str(root / "a" / "b.txt")) == b"inside"
    assert storage.read((root / "a" / "b.txt").as_uri()) == b"inside"


def test_reading_through_a_symlink_that_leads_out_is_refused(
        storage: Storage, root: Path) -> None:
    (root / "link.txt").symlink_to(root.parent / "outside" / "secret.txt")
    with pytest.raises(AccessDeniedError):
        storage.read("link.txt")
    with pytest.raises(AccessDeniedError):
        storage.read(str(root / "link.txt"))
    with pytest.raises(AccessDeniedError):
        storage.stat("link.txt")


def test_writing_into_a_symlinked_directory_that_leads_out_is_refused(
        storage: Storage, root: Path) -> None:
    (root / "out").symlink_to(root.parent / "outside", target_is_directory=True)
    with pytest.raises(AccessDeniedError):
        storage.write("out/planted.txt", b"x")
    with pytest.raises(AccessDeniedError):
        storage.write("out/sub/planted.txt", b"x")
    with pytest.raises(AccessDeniedError):
        list(storage.list("out/"))
    assert sorted(p.name for p in (root.parent / "outside").iterdir()) == ["secret.txt"]


def test_a_symlink_leading_out_is_listed_but_not_readable(storage: Storage, root: Path) -> None:
    # Listed on purpose: a job then gets an error line for it instead of losing it silently.
    storage.write("imgs/a.jpg", b"a")
    (root / "imgs" / "b.jpg").symlink_to(root.parent / "outside" / "secret.txt")
    assert list(storage.list("imgs/")) == ["imgs/a.jpg", "imgs/b.jpg"]
    with pytest.raises(AccessDeniedError):
        storage.read("imgs/b.jpg")


def test_a_root_reached_through_a_symlink_accepts_its_own_absolute_paths(
        tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
    storage = Storage(make_settings(storage_root=str(tmp_path / "alias")))
    storage.write(str(tmp_path / "alias" / "x.txt"), b"x")
    assert (tmp_path / "real" / "x.txt").read_bytes() == b"x"
    assert list(storage.list(str(tmp_path / "alias") + "/")) == [str(tmp_path / "alias" / "x.txt")]


def test_nul_bytes_and_unknown_schemes_are_refused(storage: Storage) -> None:
    with pytest.raises(AccessDeniedError):
        storage.read("a\x00b")
    with pytest.raises(PermanentError, match="unsupported scheme"):
        storage.read("http://example.com/a.jpg")


def test_writing_to_the_root_itself_is_refused(storage: Storage) -> None:
    with pytest.raises(PermanentError):
        storage.write("", b"x")


def test_temp_files_of_writes_are_not_listed(storage: Storage, root: Path) -> None:
    storage.write("a.txt", b"a")
    (root / ".rstream-tmp-leftover").write_bytes(b"partial")
    assert list(storage.list("")) == ["a.txt"]


def test_join_makes_single_slashes() -> None:
    assert join("s3://b/p/", "/x/", "y") == "s3://b/p/x/y"
    assert join("results", "job", "part-000000.jsonl") == "results/job/part-000000.jsonl"


def test_a_folder_turned_into_a_symlink_out_is_refused_once_its_cached_path_expires(
        storage: Storage, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rstream.shared.storage import local

    monkeypatch.setattr(local, "_DIR_CACHE_S", 0.0)  # expire at once rather than in a second
    storage.write("a/secret.txt", b"inside")
    assert storage.read("a/secret.txt") == b"inside"  # the folder's resolved path is cached
    (root / "a" / "secret.txt").unlink()
    (root / "a").rmdir()
    (root / "a").symlink_to(root.parent / "outside")
    with pytest.raises(AccessDeniedError):
        storage.read("a/secret.txt")
