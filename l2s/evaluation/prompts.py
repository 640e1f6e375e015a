"""Prompt sets: GenEval-style position prompts, Learn-to-Steer's multi-relation prompts, named
prompt-set families (:class:`PromptSet`) and ``--prompts`` resolution, seeds."""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from l2s.errors import L2SError
from l2s.relations import DIRECTIONAL, PROMPT_PHRASE
from .geometry import GENEVAL_POSITIONS
from .prompt_files import read_prompt_lines
from .specs import PromptSpec, RelationCheck

DEFAULT_PROMPT_COUNT = 100  # GenEval's position task has 100 prompts

# GenEval's object_names.txt: the 80 COCO classes in COCO category order.
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
# Learn-to-Steer's multi-relation object lists (in-distribution COCO, mixed, out-of-distribution).
L2S_COCO_OBJECTS = (
    "backpack", "bowl", "cat", "skateboard", "bottle", "cake", "tie", "vase", "sheep", "toothbrush",
    "teddy bear", "suitcase", "mouse", "knife", "chair", "umbrella",
)
MIXED_OBJECTS = (
    "backpack", "bowl", "cat", "sneakers", "duck", "robot", "teapot", "vase", "corgi", "mug",
    "furby", "teddy bear", "frog", "mouse", "table", "chair", "umbrella",
)
OOD_OBJECTS = (
    "teapot", "corgi", "furby", "robot", "turtle", "rabbit", "butterfly", "key", "pig", "bee",
    "tiger", "hammer", "monkey", "razor", "snake", "stapler",
)


def with_article(name: str) -> str:
    """GenEval's article choice: "an" before a vowel letter, else "a"."""
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def unique_prompts(n: int, capacity: int, draw: Callable[[], PromptSpec]) -> list[PromptSpec]:
    """Draw until ``n`` distinct prompts (deterministic for a seeded ``draw``); ``capacity`` is how
    many distinct prompts ``draw`` can make."""
    if n > capacity:
        raise L2SError(f"asked for {n} distinct prompts but only {capacity} exist for these objects")
    specs: dict[str, PromptSpec] = {}
    while len(specs) < n:
        spec = draw()
        specs.setdefault(spec.prompt, spec)
    return list(specs.values())


def geneval_position_prompts(n: int = 100, seed: int = 0,
                             classes: Sequence[str] = COCO_CLASSES) -> list[PromptSpec]:
    """``n`` distinct GenEval-style position prompts ``a photo of a/an A <rel> a/an B``.

    Two different classes and one of GenEval's four relation words per prompt, drawn with
    ``numpy.random.default_rng(seed)``; the check is "A <rel> B".
    """
    rng = np.random.default_rng(seed)
    classes = list(classes)

    def draw() -> PromptSpec:
        idx_a, idx_b = rng.choice(len(classes), size=2, replace=False)
        relation = GENEVAL_POSITIONS[rng.choice(len(GENEVAL_POSITIONS))]
        a, b = classes[idx_a], classes[idx_b]
        return PromptSpec(f"a photo of {with_article(a)} {relation} {with_article(b)}",
                          (RelationCheck(a, relation, b),), tag="position")

    return unique_prompts(n, len(classes) * (len(classes) - 1) * len(GENEVAL_POSITIONS), draw)


# (objects, relations) -> lengths of the chains "a A r1 a B r2 a C", joined by " and ".
MULTI_RELATION_PATTERNS: dict[tuple[int, int], tuple[int, ...]] = {
    (2, 1): (2,), (3, 2): (3,), (4, 2): (2, 2), (4, 3): (4,), (5, 3): (3, 2),
}


def chain_clauses(names: Sequence[str], relations: Sequence[str],
                  chains: Sequence[int]) -> tuple[list[str], list[RelationCheck]]:
    """Clauses "a A r1 a B r2 a C" over consecutive runs of ``names`` (run lengths ``chains``),
    using ``relations`` in order, and one check per chained pair."""
    clauses: list[str] = []
    checks: list[RelationCheck] = []
    start = 0
    for length in chains:
        chain = names[start:start + length]
        text = f"a {chain[0]}"
        for subject, obj in zip(chain, chain[1:]):
            relation = relations[len(checks)]
            text += f" {PROMPT_PHRASE[relation]} a {obj}"
            checks.append(RelationCheck(subject, relation, obj))
        clauses.append(text)
        start += length
    return clauses, checks


def multi_relation_prompts(n_objects: int, n_relations: int, n: int = 100, seed: int = 0,
                           objects: Sequence[str] = L2S_COCO_OBJECTS) -> list[PromptSpec]:
    """``n`` distinct multi-relation prompts in Learn-to-Steer's patterns.

    Patterns (objects, relations): (2,1) "a A r1 a B"; (3,2) "a A r1 a B r2 a C"; (4,2)
    "a A r1 a B and a C r2 a D"; (4,3) "a A r1 a B r2 a C r3 a D"; (5,3) "a A r1 a B r2 a C and
    a D r3 a E", prefixed "a photo of". Objects are drawn without replacement and the relations
    without replacement from the four directions (worded "to the left of", "above", ...); the
    article is always "a", as in the published prompt files. Each chained pair is one check.
    """
    key = (n_objects, n_relations)
    if key not in MULTI_RELATION_PATTERNS:
        known = ", ".join(f"{o}/{r}" for o, r in MULTI_RELATION_PATTERNS)
        raise L2SError(f"no prompt pattern for {n_objects} objects / {n_relations} relations (known: {known})")
    if len(objects) < n_objects:
        raise L2SError(f"need at least {n_objects} distinct objects, got {len(objects)}")
    chains = MULTI_RELATION_PATTERNS[key]
    rng = np.random.default_rng(seed)
    objects = list(objects)

    def draw() -> PromptSpec:
        names = [objects[i] for i in rng.choice(len(objects), size=n_objects, replace=False)]
        relations = [DIRECTIONAL[i] for i in rng.choice(len(DIRECTIONAL), size=n_relations, replace=False)]
        clauses, checks = chain_clauses(names, relations, chains)
        return PromptSpec("a photo of " + " and ".join(clauses), tuple(checks),
                          tag=f"{n_objects}obj_{n_relations}rel")

    capacity = math.perm(len(objects), n_objects) * math.perm(len(DIRECTIONAL), n_relations)
    return unique_prompts(n, capacity, draw)


@dataclass(frozen=True)
class PromptSet:
    """A named family of generated prompts for ``--prompts``.

    ``NAME`` draws ``position(n, seed)``; ``NAME:N_OBJ,N_REL`` draws
    ``multi_relation(n_objects, n_relations, n, seed)``. Either may be absent; the help texts
    describe each form in :func:`prompt_set_help`.
    """

    position: Callable[[int, int], list[PromptSpec]] | None = None
    multi_relation: Callable[[int, int, int, int], list[PromptSpec]] | None = None
    position_help: str = ""
    multi_relation_help: str = ""

    def pattern_prefix(self, name: str) -> str | None:
        """What starts a (possibly misspelt) ``NAME:N_OBJ,N_REL``: the bare name when ``NAME``
        alone means nothing, else ``NAME:``."""
        if self.multi_relation is None:
            return None
        return f"{name}:" if self.position is not None else name


# The prompt sets of this package; callers may pass more (e.g. a synthetic world's) by name.
PROMPT_SETS: Mapping[str, PromptSet] = {
    "geneval": PromptSet(position=geneval_position_prompts,
                         position_help="GenEval-style position prompts over COCO classes"),
    "multi": PromptSet(multi_relation=multi_relation_prompts,
                       multi_relation_help="Learn-to-Steer multi-relation prompts"),
}
_FILE_HELP = ("a file: .jsonl (GenEval metadata lines or PromptSpec lines) or .txt (one prompt per line; "
              "checks from the relation parser)")
_PATTERN_SPEC = re.compile(r"^([^:]+):(\d+),(\d+)$")


def prompt_set_help(sets: Mapping[str, PromptSet] = PROMPT_SETS) -> str:
    """The ``--prompts`` help: every form of every set, then prompt files."""
    forms = []
    for name, family in sets.items():
        if family.position is not None:
            forms.append(f"{name} ({family.position_help})")
        if family.multi_relation is not None:
            forms.append(f"{name}:N_OBJ,N_REL ({family.multi_relation_help})")
    return ", ".join(forms) + ", or " + _FILE_HELP


def resolve_prompt_set(name: str, n: int | None = None, seed: int = 0,
                       sets: Mapping[str, PromptSet] = PROMPT_SETS) -> tuple[list[PromptSpec], int]:
    """The prompts named by ``--prompts`` (a set of ``sets``, see :func:`prompt_set_help`, or a
    prompt file), and the count of file lines skipped for having no spatial relation. ``n``
    defaults to 100 for generated sets and to the whole file for a file."""
    specs, _, skipped = resolve_named_prompt_set(name, n, seed, sets)
    return specs, skipped


def resolve_named_prompt_set(name: str, n: int | None = None, seed: int = 0,
                             sets: Mapping[str, PromptSet] = PROMPT_SETS) -> tuple[list[PromptSpec], list[str], int]:
    """:func:`resolve_prompt_set`'s prompts, how messages name each one (a file's prompt by its path
    and line, ``FILE:4``; a generated one by its index, ``prompt 3``) and the lines skipped."""
    if n is not None and n < 1:
        raise L2SError(f"--n-prompts must be at least 1, got {n}")
    count = n or DEFAULT_PROMPT_COUNT
    family = sets.get(name)
    if family is not None and family.position is not None:
        return _indexed(family.position(count, seed))
    match = _PATTERN_SPEC.match(name)
    family = sets.get(match.group(1)) if match else None
    if family is not None and family.multi_relation is not None:
        return _indexed(family.multi_relation(int(match.group(2)), int(match.group(3)), count, seed))
    if Path(name).is_file():
        numbered, skipped = read_prompt_lines(name)
        if not numbered:
            raise L2SError(f"no prompt with a spatial relation in {name}")
        numbered = numbered[:n] if n else numbered
        return [spec for _, spec in numbered], [f"{name}:{number}" for number, _ in numbered], skipped
    raise _bad_prompt_set(name, sets)


def _indexed(specs: list[PromptSpec]) -> tuple[list[PromptSpec], list[str], int]:
    """A generated set's prompts named by their index (their folder's number in a run)."""
    return specs, [f"prompt {index}" for index in range(len(specs))], 0


def _bad_prompt_set(name: str, sets: Mapping[str, PromptSet]) -> L2SError:
    patterns = [k for k, family in sets.items() if family.multi_relation is not None]
    prefixes = tuple(sets[k].pattern_prefix(k) for k in patterns)
    if patterns and name.startswith(prefixes):
        forms = " or ".join(f"{k}:N_OBJ,N_REL" for k in patterns)
        return L2SError(f"bad --prompts {name!r}: write {forms}, e.g. {patterns[0]}:3,2")
    names = [k for k, family in sets.items() if family.position is not None]
    names += [f"{k}:N_OBJ,N_REL" for k in patterns]
    return L2SError(f"bad --prompts {name!r}: not a prompt set ({', '.join(names)}) nor an existing file")


MAX_SEEDS = 100_000  # one image per prompt and seed: more is a typo, not a run


def parse_seeds(text: str) -> list[int]:
    """Seeds from ``"0,1,2,3"`` or ranges ``"0-3"`` (inclusive), mixed freely; no duplicates."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise L2SError(f"bad --seeds {text!r}: use non-negative integers such as 0,1,2,3 or 0-3")
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if high < low:
            raise L2SError(f"bad --seeds range {part!r}: the end is before the start")
        if high >= 2 ** 64:
            raise L2SError(f"bad --seeds {part!r}: seeds must be below 2**64")
        if len(seeds) + high - low + 1 > MAX_SEEDS:
            raise L2SError(f"bad --seeds {text!r}: more than {MAX_SEEDS} seeds")
        seeds.extend(range(low, high + 1))
    if len(set(seeds)) != len(seeds):
        raise L2SError(f"bad --seeds {text!r}: a seed is repeated")
    return seeds
