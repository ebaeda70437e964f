"""A local directory as an object store (``file:///path``).

Keys are paths relative to the root directory, with ``/`` as separator. Writes are atomic: data goes
to a temporary file in ``<root>/.skyplane-uploads/`` (same file system as the target) and is renamed
into place, so a reader sees the old file or the new one. Multipart parts are files in that folder,
concatenated into a temporary file at ``complete``. The local file system keeps no checksum, so
``head`` computes the MD5 of the file (``list`` reports none, to stay cheap).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path

from airflow_skyplane.exceptions import BucketNotFoundError, InvalidInputError, ObjectNotFoundError
from airflow_skyplane.processes import alive
from airflow_skyplane.storage.base import (
    UPLOADS_PREFIX,
    Checksum,
    MultipartUpload,
    ObjectInfo,
    ObjectStore,
    PartInfo,
    validate_key,
    validate_part_number,
)
from airflow_skyplane.storage.kinds import StoreKind, StoreSpec, need
from airflow_skyplane.storage.uri import StorageURI

_HOST = socket.gethostname().replace("-", "_")  # no "-" in it: the temporary names split on "-"

_COPY_BUFFER = 8 * 1024 * 1024


class LocalStore(ObjectStore):
    scheme = "file"
    capabilities = frozenset()

    def __init__(self, root: str | os.PathLike[str]) -> None:
        root_path = Path(root)
        super().__init__(str(root_path))
        if not root_path.is_dir():
            raise BucketNotFoundError(
                f"directory 'file://{root_path}' does not exist: create it (mkdir -p {root_path}) "
                "or fix the path in the URI"
            )
        self.root = root_path
        self._uploads = root_path / UPLOADS_PREFIX.rstrip("/")

    @property
    def uri(self) -> str:
        return f"file://{self.root}/"

    # -- paths -----------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        validate_key(key)
        segments = key.split("/")
        if key.startswith("/") or any(s in ("", ".", "..") for s in segments):
            raise InvalidInputError(
                f"object key {key!r} cannot be a local file name: it has an empty, '.' or '..' path "
                "segment (a leading, trailing or doubled '/'); rename the object or use a cloud store"
            )
        return self.root.joinpath(*segments)

    def _temp(self) -> Path:
        self._uploads.mkdir(exist_ok=True)
        # the writer's host and process in the name: tidy() can tell a killed writer's leftover
        return self._uploads / f"tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex}"

    def _info(self, key: str, path: Path, checksum: bool) -> ObjectInfo:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"object {self.describe(key)} does not exist") from None
        if not path.is_file():
            raise ObjectNotFoundError(f"object {self.describe(key)} is a directory, not an object")
        digest = None
        if checksum:
            md5 = hashlib.md5(usedforsecurity=False)
            with path.open("rb") as f:
                while block := f.read(_COPY_BUFFER):
                    md5.update(block)
            digest = Checksum("md5", md5.hexdigest())
        mtime = datetime.fromtimestamp(st.st_mtime, tz=timezone.utc)
        return ObjectInfo(key, st.st_size, digest, mtime)

    # -- reading ---------------------------------------------------------------------------------
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk one directory at a time, entries sorted by the bytes of the key they lead to ("name/"
        # for a directory): the walk then yields keys in the same order as S3 and GCS listings.
        def walk(directory: Path, key_prefix: str) -> Iterator[ObjectInfo]:
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                return
            keyed = []
            for entry in entries:
                is_dir = entry.is_dir(follow_symlinks=False)
                name = entry.name + ("/" if is_dir else "")
                keyed.append((os.fsencode(key_prefix + name), entry, is_dir))
            keyed.sort(key=lambda item: item[0])
            for encoded, entry, is_dir in keyed:
                key = os.fsdecode(encoded)
                if not key_prefix and key == UPLOADS_PREFIX:
                    continue
                # prune subtrees that cannot match the prefix
                if is_dir:
                    if key.startswith(prefix) or prefix.startswith(key):
                        yield from walk(Path(entry.path), key)
                elif key.startswith(prefix) and entry.is_file(follow_symlinks=True):
                    st = entry.stat()
                    yield ObjectInfo(
                        key, st.st_size, None, datetime.fromtimestamp(st.st_mtime, tz=timezone.utc)
                    )

        yield from walk(self.root, "")

    def head(self, key: str) -> ObjectInfo:
        return self._info(key, self._path(key), checksum=True)

    def read(self, key: str) -> bytes:
        validate_key(key)
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFoundError(f"object {self.describe(key)} does not exist") from None

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        path = self._path(key)
        if not self._wants_range(key, offset, length):
            return b""
        try:
            with path.open("rb") as f:
                f.seek(offset)
                return f.read(length)
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFoundError(f"object {self.describe(key)} does not exist") from None

    # -- writing ---------------------------------------------------------------------------------
    def tidy(self) -> None:
        """Remove what killed writers of this machine left (temporary files of a process that is
        gone), then the hidden upload folder if nothing is in it, so a finished copy leaves no trace.

        Call it when no write is in progress (the transfer job does, after its gateways stopped):
        writers create the folder again when they need it, but one removed under a running writer
        would make that write fail. Temporary files of live processes, or of other machines
        mounting the same folder, are left alone."""
        for temp in self._uploads.glob("tmp-*"):
            parts = temp.name.split("-")  # tmp, host, pid, random
            if len(parts) == 4 and parts[1] == _HOST and parts[2].isdigit() and not alive(int(parts[2])):
                temp.unlink(missing_ok=True)
        try:
            self._uploads.rmdir()
        except OSError:
            pass  # in use by another upload, or already gone

    def _publish(self, temp: Path, key: str) -> ObjectInfo:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, target)
        return self._info(key, target, checksum=True)

    def put(self, key: str, data: bytes | bytearray, *, crc32c: int | None = None) -> ObjectInfo:
        self._path(key)  # validate before writing anything
        temp = self._temp()
        try:
            with temp.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return self._publish(temp, key)
        finally:
            temp.unlink(missing_ok=True)

    def begin_multipart(self, key: str) -> MultipartUpload:
        self._path(key)
        upload_id = uuid.uuid4().hex
        folder = self._uploads / upload_id
        folder.mkdir(parents=True)
        (folder / "key").write_text(key, encoding="utf-8")
        return MultipartUpload(key, upload_id)

    def _upload_dir(self, upload: MultipartUpload) -> Path:
        folder = self._uploads / upload.upload_id
        if not folder.is_dir():
            raise InvalidInputError(
                f"multipart upload {upload.upload_id} of {self.describe(upload.key)} does not exist "
                "(completed or aborted already): begin a new one"
            )
        return folder

    def write_part(
        self, upload: MultipartUpload, number: int, data: bytes | bytearray, *, crc32c: int | None = None
    ) -> PartInfo:
        validate_part_number(number)
        folder = self._upload_dir(upload)
        part = folder / f"part-{number:05d}"
        temp = folder / f".part-{number:05d}-{uuid.uuid4().hex}"
        temp.write_bytes(data)
        os.replace(temp, part)
        return PartInfo(number, len(data), part.name)

    def complete_multipart(self, upload: MultipartUpload, parts: Iterable[PartInfo]) -> ObjectInfo:
        ordered = self._check_parts(upload, parts)
        folder = self._upload_dir(upload)
        temp = self._temp()
        try:
            with temp.open("wb") as out:
                for p in ordered:
                    part = folder / f"part-{p.number:05d}"
                    if not part.is_file() or part.stat().st_size != p.size:
                        raise InvalidInputError(
                            f"part {p.number} of {self.describe(upload.key)} was not written (or not "
                            f"with {p.size} bytes): write it again before completing"
                        )
                    with part.open("rb") as f:
                        shutil.copyfileobj(f, out, _COPY_BUFFER)
                out.flush()
                os.fsync(out.fileno())
            info = self._publish(temp, upload.key)
        finally:
            temp.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        return info

    def abort_multipart(self, upload: MultipartUpload) -> None:
        shutil.rmtree(self._uploads / upload.upload_id, ignore_errors=True)

    def uploaded_parts(self, upload: MultipartUpload) -> dict[int, PartInfo] | None:
        """The part files of the upload's folder (each renamed into place once whole); ``None`` once
        the folder is gone. Another process on this machine, or on any machine mounting the same
        directory, continues the upload."""
        folder = self._uploads / upload.upload_id
        if not (folder / "key").is_file():
            return None
        parts: dict[int, PartInfo] = {}
        for part in folder.glob("part-*"):
            if part.name[5:].isdigit():
                parts[int(part.name[5:])] = PartInfo(int(part.name[5:]), part.stat().st_size, part.name)
        return parts

    def list_multipart_uploads(self, prefix: str = "") -> Iterator[MultipartUpload]:
        if not self._uploads.is_dir():
            return
        for folder in sorted(self._uploads.iterdir()):
            key_file = folder / "key"
            if folder.is_dir() and key_file.is_file():
                key = key_file.read_text(encoding="utf-8")
                if key.startswith(prefix):
                    yield MultipartUpload(key, folder.name)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        # remove directories left empty, up to the root, as object stores have no directories
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent


class LocalKind(StoreKind):
    """``file://``: a folder of this machine, or of a relay that mounts the same path. Spec: ``root``."""

    scheme = "file"

    def open(self, location: StorageURI, conn_id: str | None, *, exists: bool, uri: str) -> ObjectStore:
        return LocalStore(location.bucket)

    def spec(self, store: ObjectStore) -> StoreSpec:
        assert isinstance(store, LocalStore)
        return {"scheme": "file", "root": str(store.root)}

    def open_spec(self, spec: Mapping[str, object]) -> ObjectStore:
        return LocalStore(need(spec, "root"))


KIND = LocalKind()
