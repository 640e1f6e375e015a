"""``l2s make-data`` and ``l2s train``: build the classifier's training data, and train it.

:mod:`l2s.training` (torch, diffusers) is imported after the arguments are parsed: ``--help`` is at once.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from l2s.errors import L2SError
from l2s.distributed import output_lock, world
from l2s.models import TINY_MODELS
from l2s.relations import DIAGONAL, DIAGONAL_CLASSES, DIRECTIONAL, PUBLISHED_CLASSES

from .help import command_parser
from .options import (LONG_NAMES, add_device_arg, add_dtype_arg, add_threads_arg, flag_of, out_text,
                      resolve_device, use_threads)
from .outputs import folder_outputs, log_to_stderr, say_error, wrote_line

MAKE_DATA_SHARD_SIZE = 16   # samples per chunk of a new dataset


def _load_pipe(model: str, device: str, dtype: str):
    from l2s.models import load_pipeline

    return load_pipeline(model, device, dtype)


def _recorded_model(args: argparse.Namespace) -> str:
    """``--model`` as the dataset records it: a folder by its absolute path (``flux``, ``./flux/``, a
    symlink to it and a hub id of the local cache are one model, and 'l2s train' names that path), or
    as the dataset in ``--out`` spelled the same folder when an earlier version made it (so that it
    resumes)."""
    if args.model in TINY_MODELS:
        return args.model
    from l2s.evaluation.settings import canonical_model, spelled_as_before
    from l2s.training import load_dataset_meta

    name = canonical_model(args.model)
    try:
        earlier = load_dataset_meta(args.out)["settings"]
    except (L2SError, KeyError, TypeError):
        return name
    # only the model: the dataset's other settings (its maps' dtype, say) are not eval's or generate's
    return spelled_as_before(earlier, {"model": name})["model"] if isinstance(earlier, dict) else name


def build_make_data_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "l2s make-data",
        "Build the relation classifier's training data: invert labelled images twice (with the true relation "
        "word and with a wrong one, both labelled with the true relation) and store the attention maps recorded "
        "while reconstructing them. Resumable: rerun the same command after an interruption.",
        ["l2s make-data --model /models/FLUX.1-schnell --dtype bf16 --source coco \\",
         "    --annotations /data/coco/instances_train2017.json --images /data/coco/train2017 --out runs/maps",
         "l2s make-data --source pairs --annotations pairs.jsonl --images photos/ --out runs/tiny-maps  # tiny model"])
    p.add_argument("--model", default="tiny",
                   help="'tiny' / 'tiny-dev' / 'tiny-sd' (random tiny pipelines, offline) or a local diffusers "
                        "FLUX or Stable Diffusion directory")
    p.add_argument("--source", choices=("gqa", "coco", "pairs"), required=True,
                   help="gqa: GQA scene graphs; coco: COCO instances JSON; pairs: JSONL of {image, prompt}")
    p.add_argument("--annotations", nargs="+", required=True,
                   help="scene-graph JSON file(s) (gqa; several are merged), instances JSON (coco) or JSONL (pairs)")
    p.add_argument("--images", help="image directory (gqa: <image_id>.jpg; coco: file_name; pairs: relative paths); "
                                    "default: the current directory")
    p.add_argument("--out", type=out_text, required=True, help="output dataset directory (resumed if it exists)")
    p.add_argument("--classes", choices=("published", "diagonal"), default="published",
                   help="class set: published 5 classes (above, below, is, to the left of, to the right of) "
                        "or the diagonal classifier's")
    p.add_argument("--steps", type=int, help="sampling steps (default: 4 schnell, 50 dev/SD)")
    p.add_argument("--store-steps", type=int, nargs="+",
                   help="step indices whose maps are stored (default: schnell 1 3; dev/SD 5 10 15 20 25 49)")
    # The published grid at the model's own VAE: a tiny model's default is not 256 px.
    p.add_argument("--size", type=int, help="square image side (default: the published token grid at this model's "
                                            "VAE: 256 FLUX.1-schnell, 512 FLUX.1-dev / SD; tiny 32, tiny-dev and "
                                            "tiny-sd 64)")
    p.add_argument("--no-dual", action="store_true",
                   help="invert only with the correct relation word (leakage ablation; not recommended)")
    p.add_argument("--seed", type=int, default=0, help="seeds splits, wrong-relation draws and inversion noise")
    p.add_argument("--limit", type=int, help="use only the first N samples (may grow between resumed runs)")
    p.add_argument("--max-per-class", type=int, help="balance: at most N samples per relation (seeded)")
    p.add_argument("--val-fraction", type=float, default=0.15, help="share of source images in the val split")
    p.add_argument("--shard-size", type=int,
                   help=f"samples per shard / commit (default: the size the dataset in --out was made with, "
                        f"{MAKE_DATA_SHARD_SIZE} for a new one; another size than the dataset's is refused)")
    p.add_argument("--map-dtype", choices=tuple(LONG_NAMES), default="fp16", help="storage dtype of the maps")
    p.add_argument("--min-psnr", type=float,
                   help="drop samples whose reconstruction PSNR is lower (default: no filter; published: 20 FLUX, "
                        "19.5 SD)")
    p.add_argument("--gamma", type=float, default=1.0, help="RF-Inversion inversion controller strength (FLUX)")
    p.add_argument("--eta", type=float, default=1.0, help="RF-Inversion reconstruction controller strength (FLUX)")
    p.add_argument("--max-iou", type=float, default=0.3, help="coco: discard box pairs overlapping more than this")
    add_device_arg(p)
    add_threads_arg(p)
    add_dtype_arg(p, old_map_dtype=True)
    p.add_argument("--layers", type=int, metavar="K",
                   help="store only the first K blocks' maps (for classifiers of the first K blocks; a dataset "
                        "of every layer, the default, serves any K)")
    p.add_argument("--restart", action="store_true",
                   help="start over: remove the dataset already in --out (also the way out of a damaged one)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _check_make_data_args(args: argparse.Namespace) -> None:
    """Every option, before the annotations are read or a model is loaded."""
    from l2s.training import check_make_data_options, shard_size_to_resume

    if args.shard_size is None:   # resuming: the dataset's own size (another one would be refused)
        args.shard_size = shard_size_to_resume(args.out, MAKE_DATA_SHARD_SIZE, args.restart)
    from l2s.devices import check_device

    from .checks import check_input_paths
    from .models import check_model_dtype

    check_make_data_options(dtype=LONG_NAMES[args.map_dtype], val_fraction=args.val_fraction,
                            shard_size=args.shard_size, steps=args.steps, size=args.size, limit=args.limit,
                            min_psnr=args.min_psnr, gamma=args.gamma, eta=args.eta, store_steps=args.store_steps,
                            max_per_class=args.max_per_class, seed=args.seed,
                            spelled=flag_of({"dtype": "--map-dtype"}))
    if not 0.0 <= args.max_iou <= 1.0:
        raise L2SError(f"--max-iou must be in [0, 1], got {args.max_iou}")
    check_device(resolve_device(args), flag_of())
    check_model_dtype(args)
    check_input_paths(args.annotations, "--annotations")
    if args.images is not None:
        check_input_paths(args.images, "--images", folder=True)


def make_data_main(argv: Sequence[str] | None = None) -> int:
    """``l2s make-data``: returns the exit code (2 with one error line for bad input)."""
    args = build_make_data_parser().parse_args(argv)
    log_to_stderr()
    try:
        _check_make_data_args(args)
        use_threads(args)
        from l2s.training import make_dataset

        args.device = world().device(args.device)  # under torchrun / accelerate launch: this rank's GPU
        with output_lock(args.out, kind="make-data"):  # a second writer is refused here, before any work
            samples, pairs_skipped = _labelled_samples(args)
            _check_images(args, samples)   # before the model loads: a wrong --images is said at once
            pipe = _load_pipe(args.model, args.device, args.dtype)
            summary = make_dataset(
                samples, pipe, args.out,
                class_names=PUBLISHED_CLASSES if args.classes == "published" else DIAGONAL_CLASSES,
                steps=args.steps, store_steps=args.store_steps, size=args.size, dual=not args.no_dual,
                seed=args.seed, val_fraction=args.val_fraction, shard_size=args.shard_size,
                dtype=LONG_NAMES[args.map_dtype],
                min_psnr=args.min_psnr, gamma=args.gamma, eta=args.eta, model_name=_recorded_model(args),
                limit=args.limit,
                progress=not args.quiet, restart=args.restart, layers=args.layers,
                spelled=flag_of({"dtype": "--map-dtype"}))
            summary.pairs_skipped = pairs_skipped
            if summary.records == 0:
                _refuse_empty_dataset(args, summary)   # inside the lock: a folder this run made goes too
    except L2SError as error:
        return say_error(error)
    if not world().is_main:
        return 0
    print(summary.line(), file=sys.stderr)
    if not (summary.split_records or {}).get("val"):
        print(f"l2s: warning: no validation records (--val-fraction {args.val_fraction} of "
              f"{summary.samples_done} samples); 'l2s train' needs some: add samples or raise --val-fraction",
              file=sys.stderr)
    say_dataset_files(summary)
    return 0


def say_dataset_files(summary) -> None:
    """The last line of 'make-data' and 'shapes make-data': the dataset's files, its preview among them."""
    from l2s.training.store import DATASET_FILES

    names = folder_outputs(summary.out_dir, only=DATASET_FILES) if summary.out_dir.is_dir() else []
    if names:
        print(wrote_line(summary.out_dir, names), file=sys.stderr)


def _refuse_empty_dataset(args: argparse.Namespace, summary) -> None:
    """A run that made no record keeps no dataset (an empty one would only be resumed): its files go.
    (Missing images were refused before: :func:`_check_images`.)"""
    from l2s.training import remove_empty_dataset

    if world().is_main:
        remove_empty_dataset(Path(args.out))
        print(summary.line(), file=sys.stderr)
    raise L2SError(f"no sample gave a record (every one was skipped: see the lines above), so {args.out} keeps no "
                   "dataset")


def _check_images(args: argparse.Namespace, samples: list) -> None:
    """Refuse a run whose first images to invert are all missing (no dataset file is written, and the
    record of skipped pairs of a folder holding no dataset goes), with where the images are looked for."""
    from l2s.training import check_dataset_images
    from l2s.training.store import META_FILE, SKIPPED_PAIRS_FILE

    try:
        check_dataset_images(samples, args.out, limit=args.limit, restart=args.restart)
    except L2SError as error:
        if not (Path(args.out) / META_FILE).exists():   # it explains skipped pairs, not this: a new folder goes
            (Path(args.out) / SKIPPED_PAIRS_FILE).unlink(missing_ok=True)
        raise L2SError(f"{error}{_images_hint(args)}") from None


def _images_hint(args: argparse.Namespace) -> str:
    """Where image paths were resolved, when missing images may be relative to another folder."""
    if args.images is not None:
        return "; --images must be the folder the annotations' image paths are relative to"
    folder = Path(args.annotations[0]).parent   # the likeliest home of the images: say it
    return ("; without --images, relative image paths resolve against the current directory: pass --images "
            f"with the folder they are relative to (e.g. --images {folder}, the annotations' folder)")


def _labelled_samples(args: argparse.Namespace) -> tuple[list, int]:
    """The labelled relations of ``--source`` / ``--annotations``, balanced when asked, and how many
    pairs of ``--source pairs`` gave none (the first few said, all in OUT/skipped_pairs.jsonl)."""
    from l2s.training import balance_samples, coco_samples, gqa_samples, recorded_pair_samples
    from l2s.training.store import SKIPPED_PAIRS_FILE

    images = args.images if args.images is not None else "."
    pairs_skipped = 0
    if args.source == "gqa":
        samples = gqa_samples(args.annotations, images,
                              relations=DIAGONAL if args.classes == "diagonal" else DIRECTIONAL)
    elif args.source == "coco":
        samples = []
        for path in args.annotations:
            samples += coco_samples(path, images, diagonal=args.classes == "diagonal", max_iou=args.max_iou)
    else:
        samples, pairs_skipped = recorded_pair_samples(args.annotations, args.images, args.out)
    if args.max_per_class is not None:
        samples = balance_samples(samples, args.max_per_class, args.seed)
    if not samples:
        every = f" (every one of the {pairs_skipped} pairs was skipped: see {Path(args.out) / SKIPPED_PAIRS_FILE})"
        raise L2SError("the annotations gave no usable labelled relation" + (every if pairs_skipped else ""))
    return samples, pairs_skipped


def build_train_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "l2s train",
        "Train the relation classifier on a map dataset made by 'l2s make-data'. Writes the best-validation "
        "checkpoint to OUT/best (a hub-ready folder with a model card: load it with --classifier OUT/best), the "
        "latest epoch to OUT/last (rerunning the same command resumes from it) and per-epoch metrics to "
        "OUT/log.jsonl.",
        ["l2s train runs/maps --out runs/classifier",
         "l2s train runs/maps --out runs/classifier-k8 --layers 8 --epochs 100"])
    p.add_argument("dataset", metavar="DATASET", help="dataset directory written by 'l2s make-data' (one of 'l2s "
                                                      "shapes make-data' is refused: 'l2s shapes train-classifier' "
                                                      "trains its classifier)")
    p.add_argument("--out", type=out_text, required=True, help="output directory for checkpoints and the log")
    p.add_argument("--preset", default=None,
                   help="classifier preset: flux-dev, flux-schnell, sd14 or sd21 (default: the dataset's model "
                        "family; another family's is refused); channels, classes and map size come from the dataset")
    p.add_argument("--epochs", type=int, help="total epoch limit (default: 200 FLUX, 150 SD1.4, 100 SD2.1)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    p.add_argument("--lr", type=float, help="learning rate (default: 5e-5 FLUX, 1e-4 SD)")
    p.add_argument("--seed", type=int, default=0, help="seeds initial weights, shuffling and dropout")
    add_device_arg(p)
    add_threads_arg(p)
    p.add_argument("--only-pos", action="store_true",
                   help="train on correct-relation prompts only (leakage ablation; not recommended)")
    p.add_argument("--restart", "--no-resume", dest="restart", action="store_true",
                   help="start over: remove OUT's checkpoints and log (also the way out of a damaged state)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--layers", type=int, metavar="K",
                   help="a classifier of the model's first K blocks only (FLUX.1: of 57): steering then cuts "
                        "the forward and the backward after block K; read from the same dataset")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def train_main(argv: Sequence[str] | None = None) -> int:
    """``l2s train``: returns the exit code (2 with one error line for bad input)."""
    args = build_train_parser().parse_args(argv)
    from l2s.training import DEFAULT_LR, check_training_options, load_dataset_meta, train_classifier

    log_to_stderr()
    try:
        check_training_options(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                               num_workers=args.workers, device=resolve_device(args), layers=args.layers,
                               spelled=flag_of({"num_workers": "--workers"}))
        use_threads(args)
        args.device = world().device(args.device)
        meta = load_dataset_meta(args.dataset)
        _refuse_shapes_data(args.dataset, meta)
        name = args.preset if args.preset is not None else meta.get("model_family")
        if name not in DEFAULT_LR:
            presets = ", ".join(DEFAULT_LR)
            if args.preset is not None:
                raise L2SError(f"unknown classifier --preset {args.preset!r} (presets: {presets})")
            raise L2SError(f"the dataset's model family {meta.get('model_family')!r} has no classifier preset: "
                           f"choose one with --preset ({presets})")
        result = train_classifier(args.dataset, args.out, name, epochs=args.epochs, batch_size=args.batch_size,
                                  lr=args.lr, seed=args.seed, device=args.device, resume=not args.restart,
                                  prompt_types=("pos",) if args.only_pos else None, num_workers=args.workers,
                                  progress=not args.quiet, layers=args.layers,
                                  on_resume=lambda line: print(line, file=sys.stderr))
    except (L2SError, ValueError) as error:
        return say_error(error)
    if world().is_main:
        say_training_result(result, args.dataset, args.device)
    return 0


def _refuse_shapes_data(dataset: str, meta: dict) -> None:
    """A 'shapes make-data' dataset trains the shapes world's small classifier, not a preset's large
    one: refused, as 'shapes train-classifier' refuses a 'make-data' dataset."""
    from l2s.shapes.settings import SHAPES_MODEL_NAME

    if (meta.get("settings") or {}).get("model") == SHAPES_MODEL_NAME:
        raise L2SError(f"{dataset} was made by 'l2s shapes make-data', not by 'l2s make-data': train its classifier "
                       f"with 'l2s shapes train-classifier --data {dataset} --out DIR'")


def say_training_result(result, dataset, device: str = "cpu") -> None:
    """The last lines of 'l2s train' and 'l2s shapes train-classifier', on stderr as every l2s line:
    the best epoch (best: the lowest val loss, not the highest accuracy; of how many epochs), its
    validation report and where the curves are."""
    from l2s.evaluation.curves import CURVES_FILE   # loaded with the training already
    from l2s.training import validation_report

    ran = (f"{result.epochs_run} epoch{'s' * (result.epochs_run != 1)} run"
           f"{', stopped early' if result.stopped_early else ''}")
    lines = [f"best epoch {result.best_epoch} of {ran} (lowest val loss {result.best_val_loss:.4f}): val accuracy "
             f"{result.best_val_accuracy:.3f}; weights in {result.best_dir}"]
    lines += [f"best checkpoint, {line}" for line in validation_report(result.best_dir, dataset, device)]
    if (result.out_dir / CURVES_FILE).is_file():   # a run finished before curves were drawn has none
        lines.append(f"training curves in {result.out_dir / CURVES_FILE}")
    for line in lines:
        print(f"l2s: {line}", file=sys.stderr)
