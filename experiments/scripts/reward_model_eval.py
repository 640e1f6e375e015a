"""Held-out pairwise accuracy of trained SpatialScore models beside the judges they stand in for.

On the held-out pairs of a `l2s shapes reward-data` folder it scores: each reward model given
with `--model NAME=DIR` (prompt and mirror direction, by flips and pattern), the exact rule
(strict: 1.0 by construction, it chose the pairs; and on colours only), the shipped steering
classifier (each image RF-inverted with the pair's prompt; `--classifier-pairs N` limits it to
the first N pairs, `0` skips it), models against each other paired pair by pair (sign test on
the discordant pairs), and the missing-object check (a winner vs the same image with one object
painted over: does the model score the damaged image lower?).

    python experiments/scripts/reward_model_eval.py --data PAIRS --model uncertainty=RUN1/best \
        --model bt=RUN2/best --results experiments/results/reward_model
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def paired_models(scores: dict, names: list[str]) -> dict:
    """Per pair of models: right only with the first / only with the second, and the sign test."""
    from scipy.stats import binomtest

    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            right_a, right_b = scores[a][0] > scores[a][1], scores[b][0] > scores[b][1]
            only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
            p = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
            out[f"{a} vs {b}"] = {"only_first": only_a, "only_second": only_b, "p_value": p}
    return out


def paint_out(image, label: str, detector):
    """``image`` with the pixels of ``label``'s colour inside its detected box set to the background."""
    import numpy as np
    from PIL import Image

    from l2s.shapes import BACKGROUND, COLOURS

    box = detector.detect(image, [label])[label].box
    array = np.array(image)
    classes = detector.classify_pixels(image)
    colour = list(COLOURS).index(label.split()[0]) + 1
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    region = classes[y1:y2 + 1, x1:x2 + 1] == colour
    array[y1:y2 + 1, x1:x2 + 1][region] = BACKGROUND
    return Image.fromarray(array)


def missing_object_check(scorers: dict, pairs, limit: int) -> dict:
    """Share of winners whose copy with one object painted out (and failing the prompt) scores lower."""
    import numpy as np
    from PIL import Image

    from l2s.shapes import ShapesDetector
    from l2s.shapes.reward_prompts import parse_chain
    from l2s.shapes.rule_reward import RuleReward

    detector, rule, rng = ShapesDetector(), RuleReward(), np.random.default_rng(0)
    originals, damaged, prompts = [], [], []
    for k in range(min(limit, len(pairs))):
        image = Image.fromarray(pairs.images[int(pairs.winner[k])].numpy())
        prompt = pairs.records[k]["prompt"]
        names = parse_chain(prompt).names
        painted = paint_out(image, names[int(rng.integers(len(names)))], detector)
        if rule([painted], [prompt])[0] == 0:
            originals.append(image), damaged.append(painted), prompts.append(prompt)
    out = {"n": len(prompts)}
    for name, scorer in scorers.items():
        lower = (scorer(damaged, prompts) < scorer(originals, prompts)).float()
        out[name] = float(lower.mean()) if len(prompts) else None
    return out


def run(args) -> dict:
    import torch

    from l2s.classifier import RelationClassifier
    from l2s.reward import evaluate_judge, load_pairs, load_reward_model, pair_scores
    from l2s.shapes import load_shapes_pipeline, shipped_assets
    from classifier_judge import ClassifierJudge   # this script's folder is on sys.path
    from l2s.shapes.rule_reward import RuleReward

    torch.set_num_threads(args.threads)
    heldout = load_pairs(args.data, "heldout")
    scorers = {name: load_reward_model(path) for name, path in (m.split("=", 1) for m in args.model)}
    results = {"data": [str(d) for d in args.data], "heldout_pairs": len(heldout), "models": {}, "judges": {}}
    for name, scorer in scorers.items():
        results["models"][name] = {"path": dict(m.split("=", 1) for m in args.model)[name],
                                   **evaluate_judge(scorer, heldout)}
    scores = {name: pair_scores(scorer, heldout) for name, scorer in scorers.items()}
    results["paired"] = paired_models(scores, list(scorers))
    for verdict in ("strict", "colour"):
        results["judges"][f"rule_{verdict}"] = evaluate_judge(RuleReward(verdict), heldout, mirror=False)
    if args.classifier_pairs:
        pipe = load_shapes_pipeline(args.pipeline)
        judge = ClassifierJudge(pipe, RelationClassifier.load(args.classifier or shipped_assets().classifier))
        subset = heldout.subset(list(range(min(args.classifier_pairs, len(heldout)))))
        started = time.perf_counter()
        results["judges"]["classifier"] = evaluate_judge(judge, subset, mirror=False)
        results["judges"]["classifier"]["seconds"] = round(time.perf_counter() - started, 1)
        results["models_on_classifier_subset"] = {name: evaluate_judge(s, subset, mirror=False)["prompt"]["all"]
                                                  for name, s in scorers.items()}
    results["missing_object"] = missing_object_check(scorers, heldout, args.missing_object_pairs)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, type=Path, nargs="+", help="pair folder(s) (l2s shapes reward-data)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="a trained reward model")
    p.add_argument("--pipeline", type=Path, default=None, help="shapes pipeline for inversion (default shipped)")
    p.add_argument("--classifier", type=Path, default=None, help="steering classifier (default shipped)")
    p.add_argument("--classifier-pairs", type=int, default=500, help="held-out pairs the classifier judges (0: none)")
    p.add_argument("--missing-object-pairs", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", type=Path, default=None, help="write RESULTS.json")
    args = p.parse_args(argv)
    results = run(args)
    results["command"] = "python experiments/scripts/reward_model_eval.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = json.dumps(results, indent=2)
    if args.results:
        args.results.with_suffix(".json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
