"""A reward model's view of the bench's images, beside the exact verdicts: reward hacking shows as
a score that rises while exact accuracy does not, or as a score that no longer ranks correct
images above wrong ones (``reward_auc``: the chance that a correct image outscores a wrong one)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image


def reward_columns(scorer, records: Sequence, specs: Sequence, part_dir: Path, batch_size: int = 64) -> dict:
    """Mean reward-model score of one mode's images under their prompts, and its AUC against the
    strict exact verdict (None when all images are right, or all wrong). An image with no verdict (a
    prompt no detector can judge) counts in the mean, not in the AUC."""
    from scipy.stats import mannwhitneyu

    scores = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        images = []
        for record in chunk:
            with Image.open(Path(part_dir) / record.meta["image"]) as image:
                images.append(image.convert("RGB"))
        prompts = [specs[int(record.meta["prompt_index"])].prompt for record in chunk]
        scores += [float(v) for v in scorer(images, prompts)]
    right = [s for s, r in zip(scores, records) if r.result.correct]
    wrong = [s for s, r in zip(scores, records) if r.result.correct is False]
    auc = None
    if right and wrong:
        auc = float(mannwhitneyu(right, wrong, alternative="two-sided").statistic) / (len(right) * len(wrong))
    return {"reward_mean": sum(scores) / len(scores) if scores else None, "reward_auc": auc}
