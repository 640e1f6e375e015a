"""``l2s shapes reward-data`` and ``l2s shapes train-reward``: the spatial reward model's preference
pairs and its training. Thin front ends over :mod:`l2s.shapes.reward_data` and :mod:`l2s.reward`."""
from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from l2s.errors import L2SError

from .help import command_parser
from .outputs import folder_outputs, wrote_line
from .options import add_threads_arg, flag_of, out_path, use_threads


def _patterns(text: str) -> dict:
    """``2,1=0.35;3,2=0.35`` -> {"2,1": 0.35, "3,2": 0.35}."""
    try:
        return {key.strip(): float(value) for key, _, value in (item.partition("=") for item in text.split(";"))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected OBJ,REL=WEIGHT;... got {text!r}") from None


def _pair_settings():
    from l2s.shapes.pair_settings import PairSettings

    return PairSettings()


def build_reward_data_parser() -> argparse.ArgumentParser:
    from l2s.shapes.reward_prompts import PAIR_PATTERN_WEIGHTS

    p = command_parser("l2s shapes reward-data", (
        "Preference pairs for the spatial reward model: shapes-model images of the same objects, one "
        "showing the prompt, one showing it with 1 or 2-3 relations flipped (or, with --drop-fraction, "
        "one missing an object; with --duplicate-fraction, one showing an object twice), all checked "
        "by the exact detector. Sharded and resumable: rerun the same "
        "command to continue or to add pairs."),
        ["l2s shapes reward-data --out runs/pairs --pairs 2000",
         "l2s shapes reward-data --out runs/pairs --pairs 4000 --threads 2   # add pairs to the same folder"],
        settings=_pair_settings)
    p.add_argument("--out", required=True, type=out_path, help="pair folder (manifest, shards/, progress.json)")
    p.add_argument("--pairs", required=True, type=int, help="stop once this many training pairs exist")
    p.add_argument("--model", type=Path, default=None, help="shapes pipeline folder (default: the shipped one)")
    p.add_setting("--seed", type=int, help="seeds the object sets, prompts and image seeds")
    p.add_setting("--families-per-shard", type=int, help="sets of objects per committed shard")
    p.add_setting("--images-per-family", type=int,
                  help="seeds drawn per set of objects; pairs are matched among them")
    p.add_argument("--patterns", type=_patterns, default=dict(PAIR_PATTERN_WEIGHTS), metavar="OBJ,REL=W;...",
                   help="weights of the prompt patterns (default: "
                        + ";".join(f"{key}={weight:g}" for key, weight in PAIR_PATTERN_WEIGHTS.items()) + ")")
    p.add_setting("--heldout-fraction", type=float,
                  help="share of object sets whose pairs are held out (split by prompt)")
    p.add_setting("--drop-fraction", type=float,
                  help="share of winner images that also get a loser of the same seed drawn without one of "
                       "the prompt's objects (teaches the reward that a missing object is wrong)")
    p.add_setting("--duplicate-fraction", type=float,
                  help="share of winner images that also get a loser showing one of their objects twice "
                       "(painted once more at a free place: teaches the reward that an extra copy is wrong)")
    p.add_argument("--single-winners", action="store_true",
                   help="a winner must also show no object more than once (GenEval's rule passes a second copy)")
    p.add_argument("--include-held-out-vocabulary", action="store_true",
                   help="also draw the colour and shape held out of every training set (cyan, diamond)")
    p.add_argument("--batch-size", type=int, default=32, help="images per generation batch")
    p.add_argument("--max-shards", type=int, default=None, help="stop after this many shards in all")
    p.add_argument("--restart", action="store_true", help="remove the folder's pairs and start over")
    add_threads_arg(p)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--no-progress", "--quiet", action="store_true", help="no progress bar (--quiet: the same)")
    return p


def reward_data_main(argv: Sequence[str] | None = None) -> int:
    """``l2s shapes reward-data``: make (or extend) a pair folder; prints the pair counts."""
    args = build_reward_data_parser().parse_args(list(sys.argv[1:] if argv is None else argv))

    from l2s.shapes import load_shapes_pipeline
    from l2s.values import seed_value
    from l2s.shapes.reward_data import PairSettings, make_reward_pairs

    use_threads(args)
    for flag, value in (("--pairs", args.pairs), ("--batch-size", args.batch_size), ("--max-shards", args.max_shards)):
        if value is not None and value < 1:
            raise L2SError(f"{flag} must be at least 1, got {value}")
    from l2s.devices import check_device

    check_device(args.device, flag_of())
    seed_value(args.seed, "--seed")
    settings = PairSettings(seed=args.seed, families_per_shard=args.families_per_shard,
                            images_per_family=args.images_per_family, patterns=args.patterns,
                            heldout_fraction=args.heldout_fraction, drop_fraction=args.drop_fraction,
                            duplicate_fraction=args.duplicate_fraction, single_winners=args.single_winners,
                            include_held_out_vocabulary=args.include_held_out_vocabulary)
    settings.check(flag_of({"uses_per_image": "uses per image"}))
    pipe = load_shapes_pipeline(args.model, device=args.device)
    counts = make_reward_pairs(args.out, args.pairs, settings=settings, pipe=pipe, batch_size=args.batch_size,
                               max_shards=args.max_shards, progress=not args.no_progress, restart=args.restart)
    print(_pairs_line(counts, args.out), file=sys.stderr)
    if not counts.get("heldout"):
        print(f"l2s: warning: no held-out pairs (--heldout-fraction {args.heldout_fraction}): 'train-reward' will "
              "have no held-out accuracy to report; make more pairs (a larger --pairs resumes this folder) or raise "
              "--heldout-fraction (with --restart or another --out: the split is this folder's setting)",
              file=sys.stderr)
    if counts.get("train", 0) < args.pairs:
        print(f"l2s: stopped by --max-shards {args.max_shards} before --pairs {args.pairs}: rerun with a larger "
              "--max-shards (or without it) to make the rest", file=sys.stderr)
    return 0


def _pairs_line(counts: dict, out) -> str:
    """``l2s: 20000 training pairs (1 flip: 9800, 2-3 flips: 10200), 2000 held out (...), in OUT``."""
    from l2s.reward.pairs import group_label

    def split(name: str, label: str) -> str:
        flips = ", ".join(f"{group_label(key.split('/')[1])}: {counts[key]}"
                          for key in sorted(counts) if key.startswith(name + "/"))
        return f"{counts.get(name, 0)} {label}" + (f" ({flips})" if flips else "")
    return f"l2s: {split('train', 'training pairs')}, {split('heldout', 'held out')}, in {out}"


def build_train_reward_parser() -> argparse.ArgumentParser:
    from l2s.reward.settings import LOSSES, RewardTrainSettings

    p = command_parser("l2s shapes train-reward", (
        "Train the SpatialScore reward model (image + prompt -> Gaussian score) on 'reward-data' pairs; "
        "resumes from OUT/last by default; writes OUT/best, OUT/log.jsonl and OUT/results.json (held-out "
        "pairwise accuracy, by 1 vs 2-3 flipped relations and dropped or duplicated objects)."),
        ["l2s shapes train-reward --data runs/pairs --out runs/spatial-score",
         "l2s shapes train-reward --data runs/pairs --out runs/bt --loss bt   # plain Bradley-Terry"],
        settings=RewardTrainSettings)
    p.add_argument("--data", required=True, type=Path, nargs="+",
                   help="pair folder(s) made by 'l2s shapes reward-data' (several: their pairs together)")
    p.add_argument("--out", required=True, type=out_path, help="run folder")
    p.add_setting("--loss", choices=LOSSES,
                  help="uncertainty: Gaussian scores, P(win) = Phi(dmu / sqrt(s_w^2 + s_l^2)); bt: plain Bradley-Terry")
    p.add_setting("--epochs", type=int, help="training epochs in all (the learning-rate schedule spans them)")
    p.add_setting("--batch-size", type=int, help="pairs per step")
    p.add_setting("--lr", type=float, help="peak learning rate (AdamW)")
    p.add_setting("--weight-decay", type=float, help="AdamW weight decay")
    p.add_setting("--warmup-steps", type=int, help="optimiser steps of learning-rate warm-up")
    p.add_setting("--seed", type=int, help="seeds the validation split and the initial weights")
    p.add_argument("--no-mirror", action="store_true",
                   help="train each pair only under its prompt (default: also under the perturbed prompt, winner "
                        "and loser swapped)")
    p.add_setting("--val-fraction", type=float,
                  help="share of training object sets kept for model selection")
    p.add_argument("--d-model", type=int, default=None, help="model width (default 64)")
    p.add_argument("--joint-layers", type=int, default=None, help="image-text layers of the reward token (default 2)")
    p.add_argument("--design", choices=("joint", "relational"), default=None,
                   help="relational (default): each parsed clause's subject and object look up their places and a "
                        "head reads the relation; joint: a reward token attends over every text and image token")
    p.add_argument("--presence", action="store_true",
                   help="relational design: the head also reads how well each object phrase matches the image, "
                        "so a missing object can lower the score")
    p.add_argument("--grounding-layers", type=int, default=None,
                   help="text-to-image lookups that return where each word's object is (default 0)")
    p.add_argument("--channels", type=_channels, default=None, metavar="C1,C2,...",
                   help="conv widths; each after the first halves the grid (default 16,32,64: an 8x8 grid of a "
                        "32-px image)")
    p.add_argument("--restart", action="store_true", help="start over instead of resuming OUT/last")
    p.add_argument("--stop-after", type=int, default=None, metavar="EPOCHS",
                   help="stop after this many epochs of this call; the same command continues")
    add_threads_arg(p)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--no-progress", "--quiet", action="store_true", help="no progress bar (--quiet: the same)")
    return p


def _channels(text: str) -> list[int]:
    try:
        widths = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated widths like 16,32,64, got {text!r}") from None
    if not widths or min(widths) < 8 or any(w % 8 for w in widths):
        raise argparse.ArgumentTypeError("each width must be a multiple of 8 (the conv blocks use 8 groups)")
    return widths


def _headline(results: dict) -> str:
    from l2s.reward.pairs import group_label

    if not results.get("finished"):
        return f"l2s: stopped after epoch {results['epochs_done']}; rerun the same command to continue"
    heldout = results.get("heldout")
    if not heldout:
        return "l2s: trained; the pair folder has no held-out pairs to score"
    flips = heldout["prompt"]["flips"]
    parts = [f"{group_label(name)} {v['accuracy']:.3f} (n={v['n']})" for name, v in flips.items()]
    return (f"l2s: held-out pairwise accuracy {heldout['prompt']['all']['accuracy']:.3f} "
            f"(n={heldout['prompt']['all']['n']}; {', '.join(parts)}); best epoch {results['best_epoch']}")


def train_reward_main(argv: Sequence[str] | None = None) -> int:
    """``l2s shapes train-reward``: train (resuming by default); prints the held-out accuracy."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_train_reward_parser().parse_args(argv)

    from l2s.reward import RewardTrainSettings, train_reward_model
    from l2s.values import positive_int, seed_value
    from l2s.shapes import shapes_t5_tokenizer

    use_threads(args)
    from l2s.devices import check_device

    check_device(args.device, flag_of())
    seed_value(args.seed, "--seed")
    if args.stop_after is not None:
        positive_int(args.stop_after, "--stop-after")
    model = {k: v for k, v in (("d_model", args.d_model), ("joint_layers", args.joint_layers),
                               ("grounding_layers", args.grounding_layers), ("channels", args.channels),
                               ("design", args.design), ("presence", args.presence or None)) if v is not None}
    settings = RewardTrainSettings(loss=args.loss, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                   weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
                                   mirror=not args.no_mirror, val_fraction=args.val_fraction, seed=args.seed,
                                   model={**RewardTrainSettings().model, **model})
    settings.check(flag_of())   # one line naming the flag, before the data loads
    command = "l2s shapes train-reward " + " ".join(shlex.quote(a) for a in argv)
    results = train_reward_model(args.data, args.out, shapes_t5_tokenizer(), settings, device=args.device,
                                 resume=not args.restart, progress=not args.no_progress, command=command,
                                 stop_after=args.stop_after, on_resume=lambda line: print(line, file=sys.stderr))
    print(_headline(results), file=sys.stderr)
    out, epochs = Path(args.out), settings.epochs
    if results["finished"] and results["epochs_before"] >= epochs:   # only its results were written again
        print(f"l2s: {out} held a finished run of {epochs} epoch{'s' * (epochs != 1)}: its best model was scored "
              "again; --restart trains again", file=sys.stderr)
    print(wrote_line(out, ["results.json"] if results["epochs_before"] >= epochs else folder_outputs(out)),
          file=sys.stderr)
    return 0
