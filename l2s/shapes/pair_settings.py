"""What a preference-pair folder is made with: a dataclass without torch, so that
``l2s shapes reward-data --help`` can show its defaults."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from l2s.errors import L2SError

from .reward_prompts import PAIR_PATTERN_WEIGHTS, PAIR_PATTERNS
from .settings import SHAPES_STEPS, SHAPES_TRUE_CFG

# Settings added after folders were made: a manifest stores one only when it is on (not the old behaviour).
LATER = ("drop_fraction", "duplicate_fraction", "single_winners")


@dataclass
class PairSettings:
    """What a pair folder is made with (all stored in its manifest; a resume must match)."""

    seed: int = 0
    families_per_shard: int = 16
    images_per_family: int = 16
    uses_per_image: int = 2
    patterns: dict = field(default_factory=lambda: dict(PAIR_PATTERN_WEIGHTS))
    heldout_fraction: float = 0.1
    include_held_out_vocabulary: bool = False
    steps: int = SHAPES_STEPS
    true_cfg_scale: float = SHAPES_TRUE_CFG
    # Share of winner images that also get a dropped-object loser (0: relation flips only).
    drop_fraction: float = 0.0
    # Share of winner images that also get a loser with one of its objects painted twice.
    duplicate_fraction: float = 0.0
    # Winners must also show no object more than once (GenEval's rule passes a second copy).
    single_winners: bool = False

    def check(self, spelled: Callable[[str], str] = str) -> None:
        """Raise :class:`L2SError` naming the first setting that cannot work (``spelled``: its name
        as the caller's user knows it, e.g. the command-line flag)."""
        keys = {f"{o},{r}" for o, r in PAIR_PATTERNS}
        unknown = sorted(set(self.patterns or ()) - keys)
        if unknown:
            raise L2SError(f"{spelled('patterns')}: unknown pattern{'s' if len(unknown) > 1 else ''} "
                           f"{', '.join(unknown)} (OBJECTS,RELATIONS; known: {'; '.join(sorted(keys))})")
        if not self.patterns or min(self.patterns.values()) < 0 or not sum(self.patterns.values()) > 0:
            raise L2SError(f"{spelled('patterns')} must weigh {', '.join(sorted(keys))} with weights >= 0, "
                           "not all 0")
        if not 0 <= self.heldout_fraction < 1:
            raise L2SError(f"{spelled('heldout_fraction')} must be in [0, 1), got {self.heldout_fraction}")
        for name in ("drop_fraction", "duplicate_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise L2SError(f"{spelled(name)} must be in [0, 1], got {getattr(self, name)}")
        for name, least in (("images_per_family", 2), ("families_per_shard", 1), ("uses_per_image", 1)):
            if getattr(self, name) < least:
                raise L2SError(f"{spelled(name)} must be at least {least}, got {getattr(self, name)}")
        if not 0 <= self.seed < 10 ** 9:   # image seeds are seed * 10**10 + ...: they must stay below 2**64
            raise L2SError(f"{spelled('seed')} must be in [0, 10**9), got {self.seed}")

    def manifest(self) -> dict:
        """What the folder's manifest stores; a setting added later is left out at its old
        behaviour, so folders made before it still resume."""
        data = asdict(self)
        for name in LATER:
            if not data[name]:
                data.pop(name)
        return data

    @staticmethod
    def unrecorded() -> dict:
        """What a manifest without a later setting was made with (what a refusal names as its value)."""
        return {name: getattr(PairSettings(), name) for name in LATER}
