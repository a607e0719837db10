"""Following files a trainer is writing: by byte offset, never re-reading what was read.

Handles a torn last line (kept until its newline arrives), truncation and
replacement (the file shrinks, or a new file takes its name: start over and
say so), files that do not exist yet, and lines that are not JSON (skipped
and counted). No textual import: widgets consume the updates.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READ_CHUNK = 1 << 20
# A line longer than this is not a metrics record or a log line anyone reads: dropped, not buffered.
MAX_LINE = 1 << 20


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
        self.too_long = 0  # lines over MAX_LINE, dropped
        self._dropping = False  # inside a line over MAX_LINE: skip to its end

    def poll(self, max_bytes: int = READ_CHUNK) -> Update:
        update = Update()
        try:
            # Non-blocking: opening a FIFO put where the file should be would otherwise wait for a writer.
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return update
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return update  # a directory, FIFO or device where the file should be: nothing to follow
            identity = (info.st_dev, info.st_ino)
            if self.identity is not None and (identity != self.identity or info.st_size < self.offset):
                update.reset = True
                self.offset, self.partial, self._dropping = 0, b"", False
            self.identity = identity
            if self.offset < info.st_size:
                try:
                    chunk = os.pread(fd, min(max_bytes, info.st_size - self.offset), self.offset)
                except OSError:
                    return update
                self.offset += len(chunk)
                update.more = self.offset < info.st_size
                *complete, self.partial = (self.partial + chunk).split(b"\n")
                if self._dropping and complete:
                    complete, self._dropping = complete[1:], False  # the end of the overlong line
                if self._dropping or len(self.partial) > MAX_LINE:
                    if not self._dropping:
                        self.too_long += 1
                    self.partial, self._dropping = b"", True
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
            except (ValueError, RecursionError):
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
