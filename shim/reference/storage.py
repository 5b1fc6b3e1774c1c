"""The reference object store: files in a directory, with real (content MD5) ETags.

Keys are never used as file names (a key is hashed), so no key can escape the directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class StoredObject:
    path: Path
    etag: str
    content_type: str
    size: int


class ObjectStore:
    """PUT streams to a temp file and renames it into place; GET serves the file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)

    def _paths(self, key: str) -> tuple[Path, Path]:
        name = hashlib.sha256(key.encode()).hexdigest()
        return self.directory / name, self.directory / f"{name}.json"

    def get(self, key: str) -> StoredObject | None:
        data, meta = self._paths(key)
        try:
            info = json.loads(meta.read_text())
        except FileNotFoundError:
            return None
        return StoredObject(data, info["etag"], info["content_type"], data.stat().st_size)

    async def put(self, key: str, chunks: AsyncIterator[bytes], content_type: str) -> StoredObject:
        data, meta = self._paths(key)
        digest = hashlib.md5(usedforsecurity=False)
        temporary = data.with_suffix(f".{os.getpid()}.part")
        with temporary.open("wb") as file:
            async for chunk in chunks:
                digest.update(chunk)
                file.write(chunk)
        etag = f'"{digest.hexdigest()}"'
        os.replace(temporary, data)
        meta.write_text(json.dumps({"key": key, "etag": etag, "content_type": content_type}))
        return StoredObject(data, etag, content_type, data.stat().st_size)

    def delete(self, key: str) -> bool:
        data, meta = self._paths(key)
        if not meta.exists():
            return False
        meta.unlink()
        data.unlink(missing_ok=True)
        return True
