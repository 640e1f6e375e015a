"""GRPO fine-tuning of the shapes model: its prompts, its exact judges and its sampling settings.

:func:`l2s.grpo.train_grpo` is model-agnostic; this module fixes what the shapes world adds:

* :func:`grpo_prompt_split` — two-object prompts to train on and a small dev set for the log,
  both without the held-out colour and shape and without any prompt of the bench's two-object
  part, so the bench measures prompts the tuned model never trained on (its seeds differ too);
* the dev log's judges are :class:`~l2s.shapes.rule_reward.RuleReward` (the exact detector +
  GenEval rule, 0/1): strict, colours only, every object found, and strict with no object drawn twice;
* :func:`shapes_grpo_settings` — the shapes recipe's sampling (12 steps, true CFG 2, its image
  size), so the policy GRPO trains is the sampler the bench evaluates;
* :func:`train_shapes_grpo` — the run, logging the :data:`JUDGES` on the dev prompts every epoch.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from l2s.errors import L2SError, UsageError

from .bench import BENCH_PROMPT_SEED
from .model import SHIPPED_MODEL_DIR, image_size, load_shapes_pipeline
from .prompts import shapes_position_prompts
from .recipes import HELD_OUT_COLOURS, HELD_OUT_SHAPES, SHIPPED_REWARD, refuse_near_shipped_name, reward_model_path, \
    shipped_rewards
from .rule_reward import RuleReward
from .scenes import COLOURS, SHAPES
from .settings import SHAPES_STEPS, SHAPES_TRUE_CFG

GRPO_PROMPT_SEED = 1   # the bench draws with BENCH_PROMPT_SEED (0)
GRPO_DEV_PROMPTS = 32
JUDGES = ("strict", "colour", "found", "single")   # l2s.shapes.rule_reward.RULE_VERDICTS


def grpo_prompt_split(dev: int = GRPO_DEV_PROMPTS, seed: int = GRPO_PROMPT_SEED,
                      bench_prompts: int = 100) -> tuple[list, list]:
    """(train, dev) two-object :class:`~l2s.evaluation.PromptSpec` lists, disjoint from each
    other and from the bench's first ``bench_prompts`` two-object prompts; every in-vocabulary
    prompt (held-out colour and shape excluded) not in the bench is in one of them."""
    shapes = [s for s in SHAPES if s not in HELD_OUT_SHAPES]
    colours = [c for c in COLOURS if c not in HELD_OUT_COLOURS]
    every = shapes_position_prompts(n=len(colours) * (len(colours) - 1) * len(shapes) ** 2 * 4, seed=seed,
                                    shapes=shapes, colours=colours)
    bench = {spec.prompt for spec in shapes_position_prompts(n=bench_prompts, seed=BENCH_PROMPT_SEED)}
    pool = [spec for spec in every if spec.prompt not in bench]
    if dev >= len(pool):
        raise L2SError(f"only {len(pool)} prompts outside the bench; asked for {dev} dev prompts")
    return pool[dev:], pool[:dev]


def shapes_grpo_settings(pipe=None, **overrides):
    """:class:`~l2s.grpo.GRPOSettings` with the shapes recipe's sampling (at ``pipe``'s image size;
    without ``pipe`` the size is left to the run); ``overrides`` win."""
    from l2s.grpo import GRPOSettings

    base = GRPOSettings(steps=SHAPES_STEPS, true_cfg=SHAPES_TRUE_CFG, max_sequence_length=32,
                        size=None if pipe is None else image_size(pipe))
    return replace(base, **overrides)


def base_model_identity(pipeline_dir: str | Path | None = None) -> str:
    """What a GRPO run records as its base model: the pipeline folder's weights digest (default:
    the shipped model), so a copy elsewhere is the same model and one retrained in place is not."""
    from l2s.pipelines.loading import pipeline_digest

    return f"weights {pipeline_digest(pipeline_dir or SHIPPED_MODEL_DIR)}"


def load_shapes_reward(name: str | Path, device: str = "cpu", what: str = "reward"):
    """The reward :func:`train_shapes_grpo` takes, by name: ``"rule"`` (:class:`RuleReward`, strict),
    ``"spatialscore"`` (the shipped SpatialScore) or a trained SpatialScore folder, on ``device``;
    messages name the argument as ``what``."""
    if str(name) == "rule":
        return RuleReward("strict")
    folder = reward_model_path(name) if str(name) == SHIPPED_REWARD else Path(name)
    if str(name) == SHIPPED_REWARD and not folder.is_dir():
        raise L2SError(f"{what} spatialscore: no SpatialScore ships in this installation ({folder} missing); "
                       "train one with 'l2s shapes train-reward' and give its folder")
    if not folder.is_dir():
        refuse_near_shipped_name(name, ["rule", SHIPPED_REWARD], what)
        raise L2SError(f"{what} {name}: neither 'rule', 'spatialscore' nor a SpatialScore folder")
    from l2s.reward import load_reward_model

    return load_reward_model(folder, device=device)


def train_shapes_grpo(out: str | Path, reward, *, pipe=None, pipeline_dir: str | Path | None = None, settings=None,
                      resume: bool = True, progress: bool = True, command: str | None = None,
                      stop_after: int | None = None, accelerator=None, eval_every: int = 1,
                      prompts: tuple[list[str], list[str]] | None = None, reward_name: str | None = None,
                      keep_evaluated: bool = False, base_model: str | None = None, **overrides):
    """GRPO-tune the shapes model ``pipe`` (default: loaded from ``pipeline_dir``, else the
    shipped one) for ``reward`` into ``out``.

    ``settings``: a :class:`~l2s.grpo.GRPOSettings` (default :func:`shapes_grpo_settings` with
    ``overrides``). ``prompts``: (train, dev) prompt lists (default :func:`grpo_prompt_split`). The
    dev prompts are judged every ``eval_every``-th epoch (and the last) by the :data:`JUDGES`.
    ``reward_name``: what ``reward`` is (recorded; a resumed run with another is refused);
    ``keep_evaluated``: keep every judged epoch's adapter (:func:`l2s.grpo.train_grpo`). ``base_model``:
    what ``pipe`` is (:func:`base_model_identity`; without ``pipe``, ``pipeline_dir``'s), recorded: a
    resumed run on another is refused.
    """
    from l2s.grpo import train_grpo

    if settings is not None and overrides:   # they would be dropped: the settings are taken whole
        raise UsageError(f"give either settings or setting overrides ({', '.join(sorted(overrides))}), not both: "
                         "dataclasses.replace(settings, ...) changes a few")
    if pipe is not None and pipeline_dir is not None:
        raise UsageError("give either pipe or pipeline_dir, not both (pipe would be tuned, pipeline_dir ignored)")
    if pipe is None:
        pipe = load_shapes_pipeline(pipeline_dir)
        base_model = base_model or base_model_identity(pipeline_dir)
    settings = settings or shapes_grpo_settings(pipe, **overrides)
    if prompts is None:
        train, dev = ([spec.prompt for spec in part] for part in grpo_prompt_split())
    else:
        train, dev = (list(part) for part in prompts)
    judges = {name: RuleReward(name) for name in JUDGES}
    return train_grpo(pipe, reward, settings, out, train, eval_prompts=dev, evaluators=judges, resume=resume,
                      progress=progress, command=command, accelerator=accelerator, stop_after=stop_after,
                      eval_every=eval_every, reward_name=reward_name, keep_evaluated=keep_evaluated,
                      base_model=base_model, named_rewards=shipped_rewards())
