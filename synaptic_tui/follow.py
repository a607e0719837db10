"""Following files a trainer is writing: by byte offset, never re-reading what was read.

Handles a torn last line (kept until its newline arrives), truncation and
replacement (the file shrinks, or a new file takes its name: start over and
say so), files that do not exist yet, and lines that are not JSON (skipped
and counted). No textual import: widgets consume the updates.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READ_CHUNK = 1 << 20


@dataclass
class Update:
    lines: list[str] = field(default_factory=list)
    reset: bool = False  # the file was truncated or replaced: what was shown before is stale
    more: bool = False  # only part of what is new was read: poll again (keeps memory and pauses small)


class FileFollower:
    """New complete lines of one file, each time `poll()` is called."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.offset = 0
        self.partial = b""
        self.identity: tuple[int, int] | None = None  # (device, inode) of the file being read

    def poll(self, max_bytes: int = READ_CHUNK) -> Update:
        update = Update()
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return update
        try:
            stat = os.fstat(fd)
            identity = (stat.st_dev, stat.st_ino)
            if self.identity is not None and (identity != self.identity or stat.st_size < self.offset):
                update.reset = True
                self.offset, self.partial = 0, b""
            self.identity = identity
            if self.offset < stat.st_size:
                chunk = os.pread(fd, min(max_bytes, stat.st_size - self.offset), self.offset)
                self.offset += len(chunk)
                update.more = self.offset < stat.st_size
                *complete, self.partial = (self.partial + chunk).split(b"\n")
                update.lines = [line.decode("utf-8", "replace").rstrip("\r") for line in complete]
        finally:
            os.close(fd)
        return update


class JsonlFollower(FileFollower):
    """Like FileFollower, for JSON lines: yields dicts, counts the lines that are not JSON objects."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.skipped = 0

    def poll_records(self, max_bytes: int = READ_CHUNK) -> tuple[list[dict[str, Any]], bool, bool]:
        """(records, reset, more): `more` means call again, there is unread data."""
        update = self.poll(max_bytes)
        if update.reset:
            self.skipped = 0
        records = []
        for line in update.lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                self.skipped += 1
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                self.skipped += 1
        return records, update.reset, update.more

    def read_all(self) -> list[dict[str, Any]]:
        """Every record from the current offset to the end (for files known to be small)."""
        records, _, more = self.poll_records()
        while more:
            chunk, _, more = self.poll_records()
            records += chunk
        return records
