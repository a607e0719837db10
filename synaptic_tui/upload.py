"""Uploading verified exports and their model card to the Hugging Face Hub.

One repo per upload: the first weights format (lora, merged-16bit, merged-4bit)
and every GGUF at the root, other weights formats in a folder named after the
format, the model card as README.md. The token is found by `hf_token` and is
only ever handed to huggingface_hub: every message that leaves this module
passes through `redact`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from synaptic_tui.config import repo_id as check_repo_id
from synaptic_tui.exporting import EXPORT_RECORD, export_dir, human_bytes, read_export
from synaptic_tui.hf_token import find_hf_token, redact
from synaptic_tui.modelcard import build_model_card, folder_in_repo, local_base_warning
from synaptic_tui.runs import RunInfo, read_run_config, slugify

RETRIES = 4
RETRY_STATUS = {429, 500, 502, 503, 504}


class UploadError(Exception):
    """An upload that cannot start or did not finish, in words a user can act on (never holding the token)."""


@dataclass
class UploadItem:
    fmt: str
    local_dir: Path
    path_in_repo: str
    files: list[tuple[str, int]]  # (name in the export dir, size); empty until exported
    exported: bool
    estimate: int = 0  # bytes, for a format not exported yet (0: the base model's size is unknown)

    @property
    def size(self) -> int:
        return sum(size for _, size in self.files)


@dataclass
class UploadPlan:
    run: RunInfo
    checkpoint: str
    repo_id: str
    private: bool
    items: list[UploadItem]
    card: str
    token_source: str = "not set"
    repo_url: str | None = None
    commits: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(item.size for item in self.items)

    @property
    def to_export(self) -> list[str]:
        return [item.fmt for item in self.items if not item.exported]

    def describe(self) -> str:
        lines = [f"repo      {self.repo_id} ({'private' if self.private else 'public'})",
                 f"from      {self.run.run_id} {self.checkpoint}",
                 f"token     {self.token_source}"]
        for item in self.items:
            where = item.path_in_repo or "/"
            if not item.exported:
                size = f"about {human_bytes(item.estimate)}" if item.estimate else "size unknown"
                lines.append(f"{item.fmt:<13} -> {where:<14} not exported yet ({size}): exported first")
                continue
            lines.append(f"{item.fmt:<13} -> {where:<14} {len(item.files)} files, {human_bytes(item.size)}")
            for name, size in item.files:
                lines.append(f"    {name} ({human_bytes(size)})")
        lines.append(f"total     {human_bytes(self.total_bytes)} + README.md (model card)")
        lines += [f"warning   {warning}" for warning in self.warnings]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"repo_id": self.repo_id, "private": self.private, "run_id": self.run.run_id,
                "checkpoint": self.checkpoint, "token": self.token_source, "repo_url": self.repo_url, "total_bytes": self.total_bytes,
                "to_export": self.to_export, "commits": self.commits, "model_card": self.card,
                "warnings": self.warnings,
                "items": [{"format": i.fmt, "path_in_repo": i.path_in_repo, "local_dir": str(i.local_dir),
                           "exported": i.exported, "estimated_bytes": i.estimate or None,
                           "files": [{"name": n, "size": s} for n, s in i.files]}
                          for i in self.items]}


def default_repo_id(run: RunInfo) -> str | None:
    """$HF_USERNAME/<model>-<method>, or None without a username."""
    user = os.environ.get("HF_USERNAME", "").strip()
    if not user:
        return None
    model = Path(run.model).name or "model"
    return f"{user}/{slugify(f'{model}-{run.method}', 60)}"


def validate_repo_id(value: str | None, run: RunInfo) -> str:
    repo = value or default_repo_id(run)
    if not repo:
        raise UploadError("no repo id: pass --repo-id owner/name, or set HF_USERNAME to default to "
                          "$HF_USERNAME/<model>-<method>")
    try:
        return check_repo_id(repo)
    except ValueError as exc:
        raise UploadError(f"repo id {exc}") from None


def plan_upload(run: RunInfo, checkpoint: str, formats: list[str], repo_id: str | None,
                private: bool = True) -> UploadPlan:
    """What would be uploaded where, checked before any network or export work."""
    from synaptic_tui.exporting import estimated_bytes, order_formats
    from synaptic_tui.modelinfo import local_model_dir, read_model_info

    repo = validate_repo_id(repo_id, run)
    formats = order_formats(formats)
    local_base = local_model_dir(str((read_run_config(run.path).get("model") or {}).get("name") or run.model))
    info = read_model_info(local_base) if local_base else None
    items, records = [], {}
    for fmt in formats:
        local = export_dir(run.path, checkpoint, fmt)
        record = read_export(local)
        files = []
        if record is not None:
            records[fmt] = record
            files = sorted((str(p.relative_to(local)), p.stat().st_size) for p in local.rglob("*")
                           if p.is_file() and p.name != EXPORT_RECORD)
        estimate = 0 if record is not None else estimated_bytes(info.parameters if info else None, [fmt])
        items.append(UploadItem(fmt, local, folder_in_repo(fmt, formats), files, record is not None, estimate))
    card = str(build_model_card(run, checkpoint, formats, repo, records))
    _, source = find_hf_token()
    warning = local_base_warning(run)
    return UploadPlan(run, checkpoint, repo, private, items, card, token_source=source,
                      warnings=[warning] if warning else [])


def refresh_plan(plan: UploadPlan) -> UploadPlan:
    """The same plan, re-read after the missing exports were made."""
    return plan_upload(plan.run, plan.checkpoint, [i.fmt for i in plan.items], plan.repo_id, plan.private)


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _retryable(exc: BaseException) -> bool:
    """5xx/429 answers and dropped connections; huggingface_hub's own retries skip create_repo and the commit."""
    if _status(exc) in RETRY_STATUS:
        return True
    # Its HTTP client (httpx2 in huggingface_hub 2.x) raises TransportError subclasses for network failures.
    transport = any(cls.__name__ == "TransportError" for cls in type(exc).__mro__)
    offline = type(exc).__name__ == "OfflineModeIsEnabled"
    return not offline and (transport or isinstance(exc, (ConnectionError, TimeoutError)))


def _explain(exc: BaseException, plan: UploadPlan, token: str, what: str) -> UploadError:
    status = _status(exc)
    if status == 401:
        message = (f"the Hub rejected the token (401) from {plan.token_source} while trying to {what}: "
                   "log in again with `hf auth login` or set a valid HF_TOKEN")
    elif status == 403:
        message = (f"the token from {plan.token_source} may not write to {plan.repo_id} (403): "
                   "it needs write access to that namespace")
    else:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        message = f"could not {what}: {detail}"
    return UploadError(redact(message, token))


def _with_retries(call: Callable[[], Any], plan: UploadPlan, token: str, what: str,
                  say: Callable[[str], Any], backoff: float) -> Any:
    for attempt in range(1, RETRIES + 1):
        try:
            return call()
        except Exception as exc:  # huggingface_hub raises its own and httpx's errors
            if attempt == RETRIES or not _retryable(exc):
                raise _explain(exc, plan, token, what) from None
            status = _status(exc)
            say(redact(f"{what}: {status or type(exc).__name__}, retrying ({attempt}/{RETRIES - 1})", token))
            time.sleep(backoff * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def upload(plan: UploadPlan, say: Callable[[str], Any] = print, *, endpoint: str | None = None,
           backoff: float = 1.0) -> list[str]:
    """Create the repo and upload every export and the card; returns the commit URLs.

    Transient failures (5xx, 429, dropped connections) are retried with backoff;
    anything else ends the upload with a message naming what failed.
    """
    if plan.to_export:
        raise UploadError(f"export first: {', '.join(plan.to_export)} of {plan.checkpoint} not exported yet")
    token, source = find_hf_token()
    if not token:
        raise UploadError("no Hugging Face token: set HF_TOKEN, put HF_TOKEN=... in ./.env, or run `hf auth login`")
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        raise UploadError("HF_HUB_OFFLINE is set, so huggingface_hub will not reach the Hub: unset it to upload")
    api = HfApi(endpoint=endpoint, token=token)
    plan.token_source = source
    try:
        url = _with_retries(lambda: api.create_repo(plan.repo_id, private=plan.private, exist_ok=True,
                                                    repo_type="model"),
                            plan, token, f"create {plan.repo_id}", say, backoff)
        plan.repo_url = str(url)
        say(f"repo {url}")
        commits = []
        for item in plan.items:
            say(f"uploading {item.fmt} ({human_bytes(item.size)}) to {plan.repo_id}/{item.path_in_repo}")
            info = _with_retries(lambda item=item: api.upload_folder(
                repo_id=plan.repo_id, folder_path=str(item.local_dir), path_in_repo=item.path_in_repo or None,
                ignore_patterns=[EXPORT_RECORD], repo_type="model",
                commit_message=f"Upload {item.fmt} of {plan.run.run_id} {plan.checkpoint} (synaptic-tui)"),
                plan, token, f"upload {item.fmt}", say, backoff)
            commits.append(info.commit_url)
            say(f"{item.fmt}: {info.commit_url}")
        info = _with_retries(lambda: api.upload_file(
            path_or_fileobj=plan.card.encode("utf-8"), path_in_repo="README.md", repo_id=plan.repo_id,
            repo_type="model", commit_message="Model card (synaptic-tui)"),
            plan, token, "upload the model card", say, backoff)
        commits.append(info.commit_url)
        say(f"model card: {info.commit_url}")
    except UploadError:
        raise
    except Exception as exc:  # anything unforeseen still must not quote the token
        raise UploadError(redact(f"upload failed: {type(exc).__name__}: {exc}", token)) from None
    plan.commits = commits
    return commits
