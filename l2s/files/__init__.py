"""Output folders that nothing is lost in: one writer at a time (:mod:`.folders`), atomic writes
(:mod:`.atomic`), fingerprints and settings a resumed run must match (:mod:`.digests`), and state
files that fail with a line saying how to recover (:mod:`.state`)."""
from __future__ import annotations

from .atomic import (atomic_torch_save, atomic_write_bytes, atomic_write_json, atomic_write_text, follow_umask,
                     fsync_append, process_umask)
from .digests import (CONTENT_DIGEST_LIMIT, changed_settings, described_changes, file_sha256, unrecorded_digests,
                      unrecorded_later, weights_digest)
from .folders import (KIND_FILE, LOCK_FILE, OUTPUT_KINDS, FolderBusyError, claim_kind, first_names, output_lock,
                      prepare_output_dir, remove_outputs)
from .state import DamagedFileError, read_jsonl_lines, read_state_json

__all__ = [
    "CONTENT_DIGEST_LIMIT",
    "DamagedFileError",
    "FolderBusyError",
    "KIND_FILE",
    "LOCK_FILE",
    "OUTPUT_KINDS",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "changed_settings",
    "claim_kind",
    "described_changes",
    "file_sha256",
    "first_names",
    "follow_umask",
    "fsync_append",
    "output_lock",
    "prepare_output_dir",
    "process_umask",
    "read_jsonl_lines",
    "read_state_json",
    "remove_outputs",
    "unrecorded_digests",
    "unrecorded_later",
    "weights_digest",
]
