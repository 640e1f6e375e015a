"""Resuming a dataset's chunks: which committed chunks still hold the samples passed now, and
which must be made again (a grown last chunk, a sample whose image file was fixed)."""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from l2s.errors import L2SError
from l2s.files import read_jsonl_lines
from .sources import RelationSample, digest
from .store import REDO, SKIPPED_FILE

log = logging.getLogger(__name__)


def file_state(path) -> list[int] | None:
    """(size, mtime) of a file, None when there is none: what tells a fixed image file."""
    try:
        st = os.stat(path)
    except (OSError, ValueError, TypeError):
        return None
    return [st.st_size, st.st_mtime_ns]


def items_hash(members: Sequence[RelationSample]) -> str:
    return digest("\n".join(s.key for s in members))[:16]


def check_resumed_chunks(committed: dict[int, dict], chunks: list[list[RelationSample]], out_dir: Path) -> list[int]:
    """A resumed run must pass the samples of the run that wrote ``out_dir``, in the same order,
    and may add more after them: returns the chunks that grew (the earlier run's last, partial
    one), to make again with their new samples."""
    if committed and max(committed) >= len(chunks):
        raise L2SError(f"the run that wrote {out_dir} had more samples than this one ({max(committed) + 1} chunks "
                       f"against {len(chunks)}); pass them all to resume, or start over with --restart")
    grown = []
    for chunk, members in enumerate(chunks):
        info = committed.get(chunk)
        if info is None or info.get("items") == items_hash(members):
            continue
        earlier = (info.get("items") == items_hash(members[:n]) for n in range(1, len(members)))
        if chunk == max(committed) and any(earlier):
            grown.append(chunk)
            continue
        raise L2SError(f"the samples of chunk {chunk} differ from those of the run that wrote {out_dir} (other inputs "
                       "or seed?); pass the same samples in the same order, more may follow them, to resume, or "
                       "start over with --restart")
    return grown


def chunks_to_retry(out_dir: Path, chunks: list[list[RelationSample]], committed: dict[int, dict]) -> list[int]:
    """Committed chunks with a sample skipped for its image file, where that file has appeared or
    changed since: a rerun after the images were fixed makes their records instead of keeping
    the skip."""
    files = {s.key: s.image for members in chunks for s in members if isinstance(s.image, (str, os.PathLike))}
    retry = {r["chunk"] for _, r in read_jsonl_lines(out_dir / SKIPPED_FILE, fix=REDO)
             if "file_state" in r and r.get("chunk") in committed and r["key"] in files
             and file_state(files[r["key"]]) not in (None, r["file_state"])}
    if retry:
        log.warning("retrying %d chunk(s) with samples whose image files were missing or unreadable",
                    len(retry))
    return sorted(retry)


def check_images_found(items: Sequence[RelationSample], committed: dict[int, dict]) -> None:
    """Refuse a run none of whose image files exists (a wrong images folder: every sample would be
    skipped one by one), naming the folder and the first; looked for in order until one is found,
    so a partial download whose first files are missing goes on. Not once a committed chunk holds
    records (the images were found then: a resume goes on, skipping the samples whose image is gone)."""
    if any(info.get("records") for info in committed.values()):
        return
    files = list(dict.fromkeys(Path(s.image) for s in items if isinstance(s.image, (str, os.PathLike))))
    if not files or any(path.is_file() for path in files):
        return
    first = Path(os.path.abspath(files[0]))   # a relative path resolved where it was looked for
    which = (f"the image file to invert is missing ({first})" if len(files) == 1 else
             f"all {len(files)} image files to invert are missing (the first: {first})")
    raise L2SError(f"{which}: the images are not in {first.parent}; nothing was inverted")
