"""The run directory contract: run ids, run.yaml, status.json, listing and legacy discovery.

Trainers write run directories; the app only reads them. Nothing here imports
textual, pydantic or an ML library, so the home screen can list runs cheaply.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable


STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATES = ("succeeded", "failed", "cancelled")
# A run whose files cannot be read is listed in this state, with the reason, and never written to.
UNREADABLE = "unreadable"
# A status.json is a few hundred bytes; anything far bigger is not ours and is not read into memory.
MAX_STATUS_BYTES = 1 << 20
# The largest step a metrics line or status.json may name: more than any run trains, small enough
# that no arithmetic on it (ranges, progress, ETAs) can blow up.
MAX_STEP = 10**12
RUN_ID_RE = re.compile(r"^(?P<stamp>\d{8}-\d{6})-(?P<method>[a-z0-9_]+)-(?P<slug>[a-z0-9][a-z0-9._-]*)$")
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# The original Synaptic Tuner wrote runs under e.g. sft_output_rtx3090/<timestamp>/.
LEGACY_ROOT_RE = re.compile(r"^(?P<method>sft|kto|mlx)_output", re.IGNORECASE)


def resolve_runs_dir(cli_value: str | os.PathLike[str] | None = None) -> Path:
    """The runs root: --runs-dir, else $SYNAPTIC_RUNS_DIR, else ./runs."""
    value = cli_value or os.environ.get("SYNAPTIC_RUNS_DIR") or "runs"
    return Path(value).expanduser().resolve()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def slugify(text: str, max_len: int = 40) -> str:
    """A run-id-safe slug from a model or dataset name ('Qwen/Qwen2.5-0.5B' -> 'qwen2.5-0.5b')."""
    text = text.rstrip("/").rsplit("/", 1)[-1].lower()
    slug = re.sub(r"[^a-z0-9._-]+", "-", text).strip("-._")
    return (slug[:max_len].rstrip("-._")) or "run"


def make_run_id(method: str, slug: str, now: datetime | None = None) -> str:
    now = now or datetime.now()
    return f"{now:%Y%m%d-%H%M%S}-{slugify(method, 12)}-{slugify(slug)}"


# --- status.json ------------------------------------------------------------


@dataclass
class RunStatus:
    """What status.json holds. Unknown keys written by newer trainers are kept in `extra`."""

    state: str = "queued"
    # What the run is, copied from run.yaml at creation so listing runs reads one small file each.
    method: str | None = None
    platform: str | None = None
    model: str | None = None
    dataset: str | None = None
    pid: int | None = None
    pgid: int | None = None
    started_at: str | None = None
    ended_at: str | None = None
    exit_code: int | None = None
    step: int = 0
    max_steps: int | None = None
    error: str | None = None
    engine: str | None = None
    last_checkpoint: str | None = None
    updated_at: str | None = None
    # Set by the trainer when a stop (cancel) reaches it: a second cancel then says "already stopping".
    stop_requested_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # Not stored: why the app could not record a state it worked out (a full disk), for the user to see.
    write_error: str | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunStatus:
        """A status from what status.json holds; ValueError naming the field when a value has the wrong type."""
        known = {f for f in cls.__dataclass_fields__ if f not in ("extra", "write_error")}
        values = {k: v for k, v in data.items() if k in known}
        for key, value in values.items():
            _check_field(key, value)
        for key in ("best_checkpoint", "best_score"):
            if key in data:
                _check_field(key, data[key])
        if values.get("step") is None:
            values["step"] = 0
        status = cls(**values)
        status.extra = {k: v for k, v in data.items() if k not in known and k != "write_error"}
        return status

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("write_error")
        extra = data.pop("extra")
        data.update(extra)
        return data

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES


_INT_FIELDS = {"pid": 1, "pgid": 1, "exit_code": None, "step": 0, "max_steps": 0}


def _check_field(key: str, value: Any) -> None:
    """Raise ValueError when a status.json value is not what the trainer writes there."""
    if value is None:
        return
    if key == "state":
        if value not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)} (got {_shown(value)})")
    elif key in _INT_FIELDS:
        low = _INT_FIELDS[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} must be a whole number (got {_shown(value)})")
        if (low is not None and value < low) or abs(value) > MAX_STEP:
            raise ValueError(f"{key} is out of range (got {_shown(value)})")
    elif key == "best_score":
        if not isinstance(value, dict):
            raise ValueError(f"best_score must be an object (got {_shown(value)})")
    elif not isinstance(value, str):
        raise ValueError(f"{key} must be text (got {_shown(value)})")


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def read_small_text(path: Path, limit: int) -> str:
    """A small regular file's text. Never blocks on a FIFO or reads a huge file into memory:
    OSError or ValueError (with a reason a user can read) for anything else."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("is not a regular file")
        if info.st_size > limit:
            raise ValueError(f"is {info.st_size:,} bytes, far more than such a file ever holds")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ValueError(f"is more than {limit:,} bytes")
    return data.decode("utf-8")


def describe_error(exc: BaseException) -> str:
    """An OSError or parse error as one short line: 'symlink loop', 'permission denied', ..."""
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
        return "symlink loop"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start})"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc) or type(exc).__name__


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory and rename, so readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_status(run_dir: Path, status: RunStatus) -> None:
    status.updated_at = utc_now()
    atomic_write_text(Path(run_dir) / "status.json", json.dumps(status.to_dict(), indent=2) + "\n")


def load_status(run_dir: Path) -> tuple[RunStatus | None, str | None]:
    """(status, None); (None, None) when there is no status.json; (None, reason) when it cannot be read."""
    try:
        text = read_small_text(Path(run_dir) / "status.json", MAX_STATUS_BYTES)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"status.json: {describe_error(exc)}"
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return None, f"status.json: not valid JSON ({describe_error(exc)})"
    if not isinstance(data, dict):
        return None, "status.json: not a JSON object"
    try:
        return RunStatus.from_dict(data), None
    except ValueError as exc:
        return None, f"status.json: {exc}"


def read_status(run_dir: Path) -> RunStatus | None:
    """status.json, or None when it is missing or unreadable (a run being created, a foreign dir)."""
    return load_status(run_dir)[0]


def read_run_config(run_dir: Path) -> dict[str, Any]:
    return _load_yaml_mapping(Path(run_dir) / "run.yaml")


def _load_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file's top-level mapping, or {} if it is missing, unreadable or not a mapping.

    yaml is imported on first use: listing our own runs never needs it.
    """
    import yaml

    try:
        data = yaml.load(read_small_text(path, MAX_STATUS_BYTES * 4), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, ValueError, RecursionError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def create_run(runs_dir: Path, config: dict[str, Any], method: str, slug: str) -> Path:
    """Create runs/<run_id>/ with run.yaml and a queued status.json, all or nothing.

    The directory is assembled under a hidden temporary name and renamed into
    place, so a crash half-way leaves no run that looks real.
    """
    import yaml

    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    base_id = make_run_id(method, slug)
    staging = Path(tempfile.mkdtemp(prefix=".creating-", dir=runs_dir))
    try:
        (staging / "run.yaml").write_text(
            yaml.dump(config, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False, allow_unicode=True), encoding="utf-8"
        )
        model, dataset = config.get("model") or {}, config.get("dataset") or {}
        write_status(staging, RunStatus(
            state="queued",
            method=method,
            platform=str(config.get("platform") or "") or None,
            model=str(model.get("name") or "") or None if isinstance(model, dict) else None,
            dataset=str(dataset.get("path") or "") or None if isinstance(dataset, dict) else None,
        ))
        for attempt in range(1, 100):
            run_id = base_id if attempt == 1 else f"{base_id}-{attempt}"
            target = runs_dir / run_id
            try:
                # rename() onto an existing non-empty directory fails, which is what we want.
                os.rename(staging, target)
            except OSError:
                if target.exists():
                    continue
                raise
            return target
        raise FileExistsError(f"could not find a free run id for {base_id} in {runs_dir}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# --- listing ----------------------------------------------------------------


@dataclass
class Checkpoint:
    name: str  # checkpoint-N, final, or final_model for legacy runs
    path: Path
    step: int | None  # None for the final adapter until the metrics say which step it was

    @property
    def is_final(self) -> bool:
        return self.step is None


@dataclass
class RunInfo:
    """One run as the app lists it, whether written by us or by the original Synaptic Tuner."""

    run_id: str
    path: Path
    method: str
    model: str
    dataset: str
    platform: str
    status: RunStatus
    legacy: bool = False
    sort_key: str = ""

    @property
    def state(self) -> str:
        return self.status.state

    @property
    def problem(self) -> str | None:
        """Why the run cannot be read (it is then listed `unreadable` and never written to), else None."""
        if self.status.state != UNREADABLE:
            return None
        return self.status.error or "cannot be read"

    @property
    def metrics_path(self) -> Path | None:
        if not self.legacy:
            return self.path / "metrics.jsonl"
        logs = sorted((self.path / "logs").glob("training_*.jsonl"))
        return logs[-1] if logs else None

    def checkpoints(self) -> list[Checkpoint]:
        return list_checkpoints(self.path, legacy=self.legacy)


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a symlink loop, a vanished entry: not a directory we can use
        return False


def list_checkpoints(run_dir: Path, legacy: bool = False) -> list[Checkpoint]:
    found: list[Checkpoint] = []
    ckpt_root = Path(run_dir) / "checkpoints"
    try:
        entries = list(os.scandir(ckpt_root))
    except OSError:
        entries = []
    for entry in entries:
        match = CHECKPOINT_RE.match(entry.name)
        if match and int(match.group(1)) <= MAX_STEP and _is_dir(entry):
            found.append(Checkpoint(entry.name, Path(entry.path), int(match.group(1))))
    found.sort(key=lambda c: (c.step or 0, c.name))
    final = Path(run_dir) / ("final_model" if legacy else "final")
    if final.is_dir():
        found.append(Checkpoint(final.name, final, None))
    return found


def _stamp_from_dirname(name: str) -> str:
    """Sortable 'YYYYmmdd-HHMMSS' from the leading digits of a directory name, if it has them."""
    digits = re.sub(r"\D", "", name)
    return f"{digits[:8]}-{digits[8:14]}" if len(digits) >= 14 else ""


def load_run(path: Path) -> RunInfo | None:
    """A run directory written by our trainers (it has run.yaml or status.json).

    A status.json that cannot be read (corrupt, a directory, wrongly typed values) gives a run in
    state `unreadable` with the reason in `error`, which nothing ever rewrites.
    """
    path = Path(path)
    status, problem = load_status(path)
    # run.yaml is parsed only for runs whose status.json lacks the summary (older or foreign runs).
    config = read_run_config(path) if status is None or status.model is None else {}
    if status is None and not config and problem is None:
        return None
    if problem is not None:
        status = RunStatus(state=UNREADABLE, error=problem)
    status = status or RunStatus(state="queued")
    match = RUN_ID_RE.match(path.name)
    model = config.get("model") or {}
    dataset = config.get("dataset") or {}
    return RunInfo(
        run_id=path.name,
        path=path,
        method=status.method or str(config.get("method") or (match.group("method") if match else "?")),
        model=status.model or str(model.get("name", "") if isinstance(model, dict) else model),
        dataset=status.dataset or str(dataset.get("path", "") if isinstance(dataset, dict) else dataset),
        platform=status.platform or str(config.get("platform") or ""),
        status=status,
        sort_key=status.started_at or (match.group("stamp") if match else _stamp_from_dirname(path.name)),
    )


def is_legacy_run(path: Path) -> bool:
    return (
        (path / "final_model").is_dir()
        or (path / "checkpoints").is_dir()
        or any((path / "logs").glob("training_*.jsonl"))
    )


def load_legacy_run(path: Path, method: str) -> RunInfo:
    """A run of the original Synaptic Tuner layout, read-only: we never write into it."""
    has_final = (path / "final_model").is_dir()
    config = _legacy_config(path)
    model = (config.get("model") or {}).get("model_name", "") if isinstance(config.get("model"), dict) else ""
    dataset = (config.get("dataset") or {}).get("local_file", "") if isinstance(config.get("dataset"), dict) else ""
    status = RunStatus(state="succeeded" if has_final else "unknown")
    stamp = _stamp_from_dirname(path.name)
    try:
        mtime = datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y%m%d-%H%M%S")
    except OSError:
        mtime = ""
    return RunInfo(
        run_id=f"{path.parent.name}/{path.name}",
        path=path,
        method=method,
        model=str(model),
        dataset=str(dataset),
        platform="legacy",
        status=status,
        legacy=True,
        sort_key=stamp or mtime,
    )


def _legacy_config(path: Path) -> dict[str, Any]:
    for candidate in (path / "config.yaml", path / "training_config.yaml", path / "logs" / "config.yaml"):
        data = _load_yaml_mapping(candidate)
        if data:
            return data
    return {}


def unreadable_run(path: Path, reason: str) -> RunInfo:
    """A runs-dir entry that cannot be read, listed with the reason so every other run still lists."""
    match = RUN_ID_RE.match(path.name)
    return RunInfo(run_id=path.name, path=path, method=match.group("method") if match else "?", model="",
                   dataset="", platform="", status=RunStatus(state=UNREADABLE, error=reason),
                   sort_key=match.group("stamp") if match else _stamp_from_dirname(path.name))


def _scan_legacy_root(path: Path, method: str) -> Iterable[RunInfo]:
    try:
        children = sorted(path.iterdir())
    except OSError:
        return
    for child in children:
        try:
            if child.is_dir() and is_legacy_run(child):
                yield load_legacy_run(child, method)
        except (OSError, ValueError) as exc:
            yield unreadable_run(child, describe_error(exc))


def _scan_root(root: Path) -> Iterable[RunInfo]:
    # `--runs-dir sft_output_rtx3090`: the runs dir is itself one of the original tuner's output roots.
    try:
        own = LEGACY_ROOT_RE.match(root.resolve().name)
    except (OSError, RuntimeError):
        return
    if own and root.is_dir():
        yield from _scan_legacy_root(root, own.group("method").lower())
        return
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            if not entry.is_dir():
                continue
        except OSError as exc:  # a symlink loop or a link to nowhere where a run should be
            yield unreadable_run(path, describe_error(exc))
            continue
        legacy_root = LEGACY_ROOT_RE.match(entry.name)
        if legacy_root:
            yield from _scan_legacy_root(path, legacy_root.group("method").lower())
            continue
        try:
            run = load_run(path)
        except Exception as exc:  # noqa: BLE001 - one bad run never stops the listing; it says why
            run = unreadable_run(path, f"{type(exc).__name__}: {describe_error(exc)}")
        if run is not None:
            yield run


def list_runs(runs_dir: Path, extra_roots: Iterable[Path] = ()) -> list[RunInfo]:
    """Every run under the runs dir (and extra roots holding legacy outputs), newest first."""
    runs: dict[Path, RunInfo] = {}
    for root in (Path(runs_dir), *map(Path, extra_roots)):
        for run in _scan_root(root):
            try:
                key = run.path.resolve()
            except (OSError, RuntimeError):  # a symlink loop resolves to nothing
                key = run.path.absolute()
            runs.setdefault(key, run)
    return sorted(runs.values(), key=lambda r: (r.sort_key, r.run_id), reverse=True)


def find_run(runs_dir: Path, ref: str) -> RunInfo:
    """A run by id, unique id prefix, or path. Raises LookupError naming the candidates."""
    candidate = Path(ref).expanduser()
    if candidate.is_dir():
        run = load_run(candidate)
        if run is None and is_legacy_run(candidate):
            method = LEGACY_ROOT_RE.match(candidate.parent.name)
            run = load_legacy_run(candidate, method.group("method").lower() if method else "?")
        if run is not None:
            return run
    runs = list_runs(runs_dir)
    exact = [r for r in runs if r.run_id == ref]
    if exact:
        return exact[0]
    matches = [r for r in runs if r.run_id.startswith(ref) or r.run_id.endswith(ref)]
    if not matches:
        matches = [r for r in runs if ref in r.run_id]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise LookupError(f"no run {ref!r} in {runs_dir}")
    names = ", ".join(r.run_id for r in matches[:5])
    raise LookupError(f"{ref!r} matches {len(matches)} runs in {runs_dir}: {names}")
