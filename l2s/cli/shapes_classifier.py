"""``l2s shapes make-data`` and ``l2s shapes train-classifier``: the shapes classifier's map data
and its training.

Thin front ends: parse the arguments, call :mod:`l2s.shapes`, print what was made.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from l2s.shapes.settings import NEUTRAL_FRACTION, SHAPES_SHARD_SIZE

from .help import command_parser
from .options import add_threads_arg, flag_of, out_path, use_threads


def build_make_data_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "l2s shapes make-data",
        "The shapes classifier's training data: render two-object scenes, invert each with the shapes model "
        "twice (its caption with the true relation word and with a wrong one, both labelled with the true "
        "relation) and store the attention maps recorded while reconstructing them. Resumable: rerun the same "
        "command after an interruption.",
        ["l2s shapes make-data --out runs/shapes-maps --scenes 2400          # the shipped model",
         "l2s shapes make-data --model runs/shapes-model/pipeline --out runs/shapes-maps --quiet"])
    p.add_argument("--model", help="shapes pipeline dir (default: the shipped model)")
    p.add_argument("--out", required=True, type=out_path, help="output dataset folder (resumed if it exists)")
    p.add_argument("--scenes", type=int, default=2400,
                   help=f"two-object scenes to invert (default 2400); about one in {round(1 / NEUTRAL_FRACTION)} also "
                        "gives a neutral 'is' sample (\"A red circle\"), so the dataset has more samples than scenes")
    p.add_argument("--seed", type=int, default=0, help="seeds the scenes and the wrong relation words (default 0)")
    p.add_argument("--no-dual", action="store_true", help="pos prompts only")
    p.add_argument("--layers", type=int, metavar="K",
                   help="store only the first K blocks' maps (default: every layer, which serves any K)")
    p.add_argument("--shard-size", type=int,
                   help=f"samples per committed chunk: an interruption loses at most this many (default: the size "
                        f"the dataset in --out was made with, {SHAPES_SHARD_SIZE} for a new one; another size than "
                        f"the dataset's is refused)")
    p.add_argument("--restart", action="store_true",
                   help="start over: remove the dataset already in --out (also the way out of a damaged one)")
    add_threads_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars, only l2s's own lines")
    return p


def make_data_main(argv: Sequence[str] | None = None) -> int:
    """``l2s shapes make-data``: dual-inverted attention maps of rendered shapes scenes."""
    args = build_make_data_parser().parse_args(argv)

    from l2s.shapes import load_shapes_pipeline, make_shapes_data

    use_threads(args)
    from l2s.distributed import output_lock, world
    from l2s.training import shard_size_to_resume
    from l2s.values import positive_int, seed_value

    if args.shard_size is None:   # resuming: the dataset's own size (another one would be refused)
        args.shard_size = shard_size_to_resume(args.out, SHAPES_SHARD_SIZE, args.restart)
    positive_int(args.scenes, "--scenes")
    positive_int(args.shard_size, "--shard-size")
    seed_value(args.seed, "--seed")
    with output_lock(args.out, kind="make-data"):  # a second writer is refused before the model loads
        pipe = load_shapes_pipeline(args.model)
        summary = make_shapes_data(pipe, args.out, args.scenes, args.seed, dual=not args.no_dual,
                                   progress=not args.quiet, layers=args.layers, restart=args.restart,
                                   shard_size=args.shard_size)
    if world().is_main:
        print(summary.line(), file=sys.stderr)
        if warning := summary.warning("make more scenes (--scenes)"):
            print(warning, file=sys.stderr)
        from .training import say_dataset_files

        say_dataset_files(summary)
    return 0


def build_train_classifier_parser() -> argparse.ArgumentParser:
    from l2s.shapes import SHAPES_CLASSIFIER_EPOCHS, SHAPES_CLASSIFIER_LR

    p = command_parser(
        "l2s shapes train-classifier",
        "Train the shapes-world relation classifier (small config) on a 'l2s shapes make-data' dataset; writes "
        "OUT/best (load it with --classifier OUT/best) and reports its validation accuracy per prompt type.",
        ["l2s shapes train-classifier --data runs/shapes-maps --out runs/shapes-classifier --epochs 40",
         "l2s shapes train-classifier --data runs/shapes-maps --out runs/shapes-classifier-k2 --layers 2"])
    p.add_argument("--data", required=True, type=Path,
                   help="a map dataset written by 'l2s shapes make-data' (one of 'l2s make-data' is refused: "
                        "'l2s train' trains its classifier)")
    p.add_argument("--out", required=True, type=out_path, help="run folder: best/, last/ and log.jsonl")
    p.add_argument("--no-dual", action="store_true", help="train on pos prompts only (leakage ablation)")
    p.add_argument("--layers", type=int, metavar="K",
                   help="a classifier of the model's first K blocks only (steering then cuts the forward "
                        "after block K); read from the same data (default: every layer the data holds)")
    p.add_argument("--epochs", type=int, default=SHAPES_CLASSIFIER_EPOCHS,
                   help="epoch limit (training stops sooner once validation stops improving)")
    p.add_argument("--lr", type=float, default=SHAPES_CLASSIFIER_LR, help="learning rate (AdamW)")
    p.add_argument("--seed", type=int, default=0, help="seeds initial weights, shuffling and dropout")
    p.add_argument("--restart", action="store_true",
                   help="start over: remove OUT's checkpoints and log (also the way out of a damaged state)")
    add_threads_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars, only l2s's own lines")
    return p


def train_classifier_main(argv: Sequence[str] | None = None) -> int:
    """``l2s shapes train-classifier``: the small shapes classifier on a make-data dataset."""
    args = build_train_classifier_parser().parse_args(argv)

    from l2s.shapes import train_shapes_classifier
    from l2s.training import check_training_options

    from .training import say_training_result

    check_training_options(epochs=args.epochs, lr=args.lr, seed=args.seed, layers=args.layers, spelled=flag_of())
    use_threads(args)
    result = train_shapes_classifier(args.data, args.out, dual=not args.no_dual, epochs=args.epochs, lr=args.lr,
                                     seed=args.seed, progress=not args.quiet, layers=args.layers,
                                     resume=not args.restart, on_resume=lambda line: print(line, file=sys.stderr))
    from l2s.distributed import world

    if world().is_main:
        say_training_result(result, args.data)
    return 0
