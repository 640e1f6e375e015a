"""Make the classifier's training data: labelled relations -> dual inversions -> a sharded map dataset.

:func:`make_dataset` inverts every sample twice (``pos``/``neg`` prompts,
:func:`l2s.training.dual_invert`) and writes the dataset format of :mod:`.store`.

Creation is resumable: samples are processed in fixed chunks (``shard_size`` samples each), each
committed atomically. Every random choice is derived from (seed, sample), never from processing
order, so an interrupted and resumed job writes the same bytes as an uninterrupted one.
"""
from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from l2s.distributed import output_lock, world
from l2s.errors import L2SError
from l2s.files import atomic_write_text, read_jsonl_lines
from l2s.pipelines.families import denoiser, pipeline_family, pixels_per_token
from l2s.relations import PUBLISHED_CLASSES
from .chunks import check_images_found, check_resumed_chunks, chunks_to_retry
from .inversion_utils import (
    DEFAULT_STEPS,
    DEFAULT_STORE_STEPS,
    PUBLISHED_MIN_PSNR,
    check_store_steps,
    default_image_size,
    map_grid,
)
from .layers import first_layers_capture
from .options import check_make_data_options
from .preview import write_preview
from .samples import Job, SkipLog, invert_chunk
from .sources import RelationSample, prompt_pair_samples
from .store import (REDO, SKIPPED_FILE, SKIPPED_PAIRS_FILE, committed_rows, dataset_meta, load_dataset_meta,
                    read_progress)
from .writer import DatasetWriter


# The largest map grid make_dataset accepts: 8x the published FLUX-dev grid (32); a larger image
# does not fit in memory while its attention is recorded.
MAX_MAP_GRID = 256


@dataclass(frozen=True)
class Reconstruction:
    """How well the inversions reconstructed their images: the PSNR (dB) of a dataset's records."""

    mean: float
    least: float
    worst: str                # the record with the least: its image id and prompt
    floor: float | None       # the model family's published filter (PUBLISHED_MIN_PSNR), if it has one

    def text(self) -> str:
        """``reconstruction PSNR mean 24.1 dB, min 17.3 dB (img3 'a cat above a dog': below ...)``."""
        low = (f" ({self.worst}: below the published {self.floor:g} dB filter)"
               if self.floor is not None and self.least < self.floor else "")
        return f"reconstruction PSNR mean {self.mean:.1f} dB, min {self.least:.1f} dB{low}"


def reconstruction(rows: Sequence[dict], model_family: str | None) -> Reconstruction | None:
    """The PSNR of manifest ``rows`` that record one (None when none does: a dataset not inverted)."""
    scored = [row for row in rows if isinstance(row.get("psnr"), (int, float))]
    if not scored:
        return None
    worst = min(scored, key=lambda row: row["psnr"])
    return Reconstruction(statistics.fmean(row["psnr"] for row in scored), float(worst["psnr"]),
                          f"{worst.get('image_id')} {worst.get('prompt')!r}", PUBLISHED_MIN_PSNR.get(model_family))


@dataclass
class DatasetSummary:
    """What :func:`make_dataset` left on disk."""

    out_dir: Path
    records: int
    samples_done: int
    skipped: int
    split_records: dict[str, int] = field(default_factory=dict)
    samples_resumed: int = 0  # samples an earlier run had committed when this call started
    made_of: str = ""   # what the samples are, when a maker knows ("16 scenes + 2 neutral 'is' samples")
    pairs_skipped: int = 0   # --source pairs: pairs that gave no sample (recorded_pair_samples)
    psnr: Reconstruction | None = None
    preview: Path | None = None   # the picture make_dataset drew (.preview)

    def line(self) -> str:
        """``l2s: 3054 records (a map stack per stored step and prompt; train 2598, val 456) from 509
        samples (0 skipped) in OUT`` and, after a resume, how many samples were there before. The
        split counts stand beside the records they count, not the samples."""
        splits = ", ".join(f"{name} {count}" for name, count in sorted(self.split_records.items()))
        splits = f"; {splits}" if splits else ""
        resumed = (f"; {self.samples_resumed} of them an earlier run had made (resumed)"
                   if self.samples_resumed else "")
        made_of = f"{self.made_of}; " if self.made_of else ""
        pairs = (f"; {self.pairs_skipped} pair{'s' * (self.pairs_skipped != 1)} skipped before inversion, listed in "
                 f"{SKIPPED_PAIRS_FILE}" if self.pairs_skipped else "")
        psnr = f"; {self.psnr.text()}" if self.psnr else ""
        return (f"l2s: {self.records} records (a map stack per stored step and prompt{splits}) from "
                f"{self.samples_done} samples ({made_of}{self.skipped} skipped{pairs}) in {self.out_dir}{resumed}"
                f"{psnr}")

    def warning(self, more: str) -> str | None:
        """A line when a split is empty (training needs both); ``more``: how to make more samples."""
        empty = [name for name in ("train", "val") if not self.split_records.get(name)]
        if not empty or not self.records:
            return None
        return (f"l2s: warning: the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty: "
                f"training needs both; {more}")


def make_dataset(
    samples: Iterable[RelationSample],
    pipe,
    out_dir: str | Path,
    *,
    class_names: Sequence[str] = PUBLISHED_CLASSES,
    steps: int | None = None,
    store_steps: Sequence[int] | None = None,
    size: int | None = None,
    dual: bool = True,
    seed: int = 0,
    val_fraction: float = 0.15,
    shard_size: int = 16,
    dtype: str = "float16",
    min_psnr: float | None = None,
    gamma: float = 1.0,
    eta: float = 1.0,
    num_iter: int = 5,
    map_size: int = 16,
    max_sequence_length: int = 512,
    model_name: str | None = None,
    limit: int | None = None,
    progress: bool = True,
    on_sample: Callable[[int], None] | None = None,
    restart: bool = False,
    layers: int | None = None,
    spelled: Callable[[str], str] = str,
) -> DatasetSummary:
    """Dual-invert every sample with ``pipe`` and write (or resume) a map dataset in ``out_dir``.

    Each sample gives, per stored step, a ``pos`` record (prompt with its true relation) and,
    when ``dual``, a ``neg`` record (a relation drawn from the other classes); both labelled with
    the true class. Unreadable images, phrases missing from the tokens, relations outside
    ``class_names`` and (with ``min_psnr``) poor reconstructions are skipped and logged in
    ``skipped.jsonl``. ``shard_size`` samples make one chunk (one shard, one commit). Maps are
    stored as ``dtype`` ("float16", "bfloat16" or "float32"). Calling again with the same
    arguments resumes (damaged chunks are redone); ``limit`` (first N samples) may grow between
    calls; ``restart`` removes a dataset already in ``out_dir`` first. ``on_sample(i)`` is called
    after sample ``i`` was processed (before its chunk is committed). ``out_dir`` is locked while
    this runs: a second writer is refused (:class:`l2s.files.FolderBusyError`). ``layers=K``
    stores only the model's first K attention layers (blocks): data for classifiers of the first K
    blocks only, K/57 of the size on FLUX (a dataset of every layer serves any K, :mod:`.layers`).
    Errors name an argument as ``spelled`` writes it (a CLI passes its flags).
    """
    # The recipe's settings as given: checked, then recorded in dataset.json (in this order).
    recipe = dict(dual=dual, seed=seed, val_fraction=val_fraction, shard_size=shard_size, dtype=dtype,
                  min_psnr=min_psnr, gamma=gamma, eta=eta, num_iter=num_iter, map_size=map_size,
                  max_sequence_length=max_sequence_length)
    check_make_data_options(steps=steps, size=size, limit=limit, store_steps=store_steps, class_names=class_names,
                            spelled=spelled, **recipe)
    family, steps, store, size = _steps_and_side(pipe, steps, store_steps, size, spelled)
    class_names = tuple(class_names)
    items = _unique_samples(samples, limit)
    if not isinstance(out_dir, (str, Path)):
        raise L2SError(f"{spelled('out_dir')} must be a folder path, got {out_dir!r}")
    out_dir = Path(out_dir)
    with output_lock(out_dir, kind="make-data"):
        check_dataset_images(items, out_dir, restart=restart)
        settings = _dataset_settings(pipe, family, model_name, class_names, steps, store, size, layers, recipe)
        resumed = _write_dataset(items, pipe, out_dir, restart, on_sample, progress, settings)
        summary = world().on_main(lambda: _summary_and_preview(out_dir, items))
    return replace(summary, samples_resumed=resumed)


def _steps_and_side(pipe, steps: int | None, store_steps: Sequence[int] | None, size: int | None,
                    spelled: Callable[[str], str]) -> tuple[str, int, tuple[int, ...], int]:
    """The model family, the sampling steps, the stored step indices and the image side: the
    caller's or the model's defaults, checked against the model."""
    family = pipeline_family(pipe)
    steps = int(steps if steps is not None else DEFAULT_STEPS[family])
    store = check_store_steps(DEFAULT_STORE_STEPS[family] if store_steps is None else store_steps, steps, spelled)
    return family, steps, store, _image_side(pipe, size, spelled)


def _dataset_settings(pipe, family: str, model_name: str | None, class_names: tuple[str, ...], steps: int,
                      store: tuple[int, ...], size: int, layers: int | None, recipe: dict) -> dict:
    """What dataset.json records of how the dataset was made (a resumed run must match it; the
    keys' order is the file's)."""
    return dict(model_family=family, model=model_name, class_names=list(class_names), steps=steps,
                store_steps=list(store), size=size, **recipe,
                **({} if layers is None else {"layers": int(layers)}), weights_dtype=_weights_dtype(pipe))


def _summary_and_preview(out_dir: Path, items: list[RelationSample]) -> DatasetSummary:
    """The dataset's summary, and its preview drawn, by rank 0: it commits the last round, which the
    other ranks could read before it lands (a rank would count no record when each had one chunk)."""
    rows, meta = committed_rows(out_dir), load_dataset_meta(out_dir)
    return replace(dataset_summary(out_dir, rows, meta), preview=write_preview(out_dir, rows, items, meta))


def _weights_dtype(pipe) -> str:
    """What the denoiser ran in, e.g. "bfloat16" (maps of another precision are other data; a dataset
    made before it was recorded resumes: :data:`.writer.RECORDED_LATER`)."""
    return str(denoiser(pipe).dtype).removeprefix("torch.")


def _image_side(pipe, size: int | None, spelled: Callable[[str], str]) -> int:
    """The inverted images' side: ``size`` or the model's default, a whole number of tokens."""
    size = int(size if size is not None else default_image_size(pipe))
    unit = pixels_per_token(pipe)
    if size % unit:
        raise L2SError(f"{spelled('size')} must be a multiple of {unit} pixels for this model, got {size}")
    if size // unit > MAX_MAP_GRID:  # refused here: past it, the machine kills the job unannounced
        raise L2SError(f"{spelled('size')} {size} gives {size // unit}x{size // unit} attention maps; at "
                       f"most {MAX_MAP_GRID}x{MAX_MAP_GRID} ({MAX_MAP_GRID * unit} px) for this model")
    return size


def _write_dataset(items: list[RelationSample], pipe, out_dir: Path, restart: bool,
                   on_sample: Callable[[int], None] | None, progress: bool, settings: dict) -> int:
    """Invert and commit every chunk of ``items`` that ``out_dir`` does not hold yet; returns how
    many samples it held already.

    Spread over processes (:mod:`l2s.distributed`), the chunks left are dealt out in rounds, one
    per rank: each rank inverts its chunk and writes its shard, and rank 0 commits them all in
    chunk order, so the dataset is the one a single process writes.
    """
    s = settings
    class_names, store, steps, shard_size = tuple(s["class_names"]), s["store_steps"], s["steps"], s["shard_size"]
    capture = first_layers_capture(denoiser(pipe), s.get("layers"))
    try:
        latent_hw = map_grid(pipe, s["size"])
        extra = dict(channels=capture.channels(), map_size=s["map_size"], orig_map_size=latent_hw[0],
                     class_names=list(class_names), store_steps=list(store), num_steps=steps,
                     model_family=s["model_family"],
                     layer_layout=[[name, heads, list(hw)] for name, heads, hw in capture.layer_layout(latent_hw)])
        writer: list[DatasetWriter] = []  # rank 0's, the only process that commits

        def open_writer() -> dict[int, dict]:
            writer.append(DatasetWriter(out_dir, dataset_meta(settings, extra), restart=restart, progress=progress))
            return writer[0].committed

        chunks = [items[i:i + shard_size] for i in range(0, len(items), shard_size)]

        def open_and_check() -> dict[int, dict]:
            grown = check_resumed_chunks(open_writer(), chunks, out_dir)
            writer[0].redo(sorted({*grown, *chunks_to_retry(out_dir, chunks, writer[0].committed)}))
            return writer[0].committed

        committed = world().on_main(open_and_check)
        job = Job(pipe, class_names, s["seed"], s["dual"], s["val_fraction"], s["min_psnr"], s["dtype"],
                   dict(steps=steps, store_steps=store, size=s["size"], gamma=s["gamma"], eta=s["eta"],
                        num_iter=s["num_iter"], map_size=s["map_size"],
                        max_sequence_length=s["max_sequence_length"], capture=capture), out_dir, shard_size, on_sample)
        return _write_chunks(writer[0] if writer else None, job, chunks, committed, progress)
    finally:
        capture.remove()


def _write_chunks(writer: DatasetWriter | None, job: Job, chunks: list[list[RelationSample]],
                  committed: dict[int, dict], progress: bool) -> int:
    """The chunks not yet committed, one per rank per round; rank 0 (``writer``) commits each round.
    Returns the samples of the chunks committed before."""
    group = world()
    pending = [c for c in range(len(chunks)) if c not in committed]
    done = sum(len(members) for c, members in enumerate(chunks) if c in committed)
    with tqdm(total=sum(map(len, chunks)), initial=done, disable=not (progress and group.is_main),
              desc="l2s make-data", unit="sample") as bar:
        for start in range(0, len(pending), group.size):
            turn = pending[start:start + group.size]
            chunk = turn[group.rank] if group.rank < len(turn) else None
            made = None if chunk is None else invert_chunk(job, chunk, chunks[chunk], bar)
            for share in group.gather(made):
                if share is not None and writer is not None:
                    writer.record(*share)
                    bar.update(0 if share[0] == chunk else len(chunks[share[0]]))
    return done


def check_dataset_images(samples: Iterable[RelationSample], out_dir: str | Path, limit: int | None = None,
                         restart: bool = False) -> None:
    """Refuse, before a model is loaded or a file written, a :func:`make_dataset` call (same
    arguments) whose first images are all missing: a wrong images folder, that would skip every
    sample (:func:`.chunks.check_images_found`)."""
    try:
        committed = {} if restart else read_progress(Path(out_dir))["chunks"]
    except L2SError:   # a damaged record: the writer says so, and how to go on
        committed = {}
    check_images_found(_unique_samples(samples, limit), committed)


def recorded_pair_samples(annotations: Sequence[str | Path], images_dir: str | Path | None,
                          out_dir: str | Path) -> tuple[list[RelationSample], int]:
    """The samples of pairs files (:func:`.sources.prompt_pair_samples`) for a dataset in
    ``out_dir``, and how many pairs gave none: the first few are logged (by rank 0), every one is
    recorded with its reason in ``out_dir/skipped_pairs.jsonl`` at once (a run refused for having
    nothing to invert says why there too); an earlier run's record goes."""
    record, said, skipped = Path(out_dir) / SKIPPED_PAIRS_FILE, SkipLog("pairs"), []

    def skip(where: str, reason: str) -> None:
        skipped.append({"pair": where, "reason": reason})
        if world().is_main:
            said(where, reason, record)

    samples = [s for path in annotations for s in prompt_pair_samples(path, images_dir, on_skip=skip)]
    world().on_main(lambda: _write_pair_record(record, skipped))
    return samples, len(skipped)


def _write_pair_record(record: Path, skipped: list[dict]) -> None:
    if skipped:
        atomic_write_text(record, "".join(json.dumps(row) + "\n" for row in skipped))
    else:   # a record of other annotations would explain skips this run has not
        record.unlink(missing_ok=True)


def _unique_samples(samples: Iterable[RelationSample], limit: int | None) -> list[RelationSample]:
    """The first ``limit`` unique samples in the given order (a relation listed twice would
    duplicate records)."""
    unique: dict[str, RelationSample] = {}
    if samples is None or isinstance(samples, (str, dict)):
        raise L2SError(f"samples must be RelationSample items (l2s.training.RelationSample), got {samples!r}")
    for number, s in enumerate(samples):
        if not isinstance(s, RelationSample):
            raise L2SError(f"sample {number} is a {type(s).__name__}, not an l2s.training.RelationSample")
        unique.setdefault(s.key, s)
    return list(unique.values())[: limit if limit is not None else None]


def dataset_summary(out_dir: str | Path, rows: list[dict] | None = None, meta: dict | None = None) -> DatasetSummary:
    """Counts of the committed chunks of a (possibly partial) dataset directory, and their
    reconstruction PSNR; ``rows``: its :func:`.store.committed_rows`, ``meta`` its ``dataset.json``,
    when read already."""
    out_dir = Path(out_dir)
    manifest = committed_rows(out_dir) if rows is None else rows
    chunks = read_progress(out_dir)["chunks"]
    skipped = [r for _, r in read_jsonl_lines(out_dir / SKIPPED_FILE, fix=REDO) if r.get("chunk") in chunks]
    keys = {r["sample_key"] for r in manifest} | {r["key"] for r in skipped}
    family = (load_dataset_meta(out_dir) if meta is None else meta).get("model_family")
    return DatasetSummary(out_dir, len(manifest), len(keys), len(skipped),
                          dict(Counter(r["split"] for r in manifest)), psnr=reconstruction(manifest, family))

