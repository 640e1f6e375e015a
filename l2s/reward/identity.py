"""Which reward model a run used, recorded so that however its folder is spelled the same model
is recognised, and a model retrained in place is not (no torch)."""
from __future__ import annotations

from pathlib import Path

TOKENIZER_DIR = "tokenizer"
MODEL_CARD = "README.md"   # train-reward writes it when it ends: a rerun may change it, not the model
NAMED_REWARDS = ("rule", "spatialscore")   # the exact rule and the shipped SpatialScore
_WEIGHTS = " (weights "


def reward_model_folder(folder: str | Path) -> Path:
    """The folder a reward model loads from: ``folder``, or its ``best/`` (a train-reward run)."""
    folder = Path(folder)
    if not (folder / TOKENIZER_DIR).is_dir() and (folder / "best" / TOKENIZER_DIR).is_dir():
        return folder / "best"
    return folder


def reward_identity(name: str) -> str:
    """``rule`` / ``spatialscore`` by name; a folder as the model it loads (absolute, its
    ``best/`` for a run folder) with its weights' fingerprint."""
    if name in NAMED_REWARDS:
        return name
    from l2s.files import weights_digest

    folder = reward_model_folder(Path(name).resolve())
    return f"{folder}{_WEIGHTS}{weights_digest(folder, leave_out=(MODEL_CARD,))})"


def same_reward(earlier: str | None, now: str | None, named: dict[str, str | Path] | None = None) -> bool:
    """Whether two recorded rewards are one model. Records made before identities were (a
    folder as typed) match the identity of that folder as it resolves now. ``named``: a named
    reward's folder (the shipped SpatialScore's): the name and that folder, however spelled, are one."""
    earlier, now = (_as_named(identity, named or {}) for identity in (earlier, now))
    if earlier == now or earlier is None or now is None:
        return earlier == now
    if _WEIGHTS in earlier and _WEIGHTS in now or _WEIGHTS not in earlier and _WEIGHTS not in now:
        return False
    typed, recorded = (earlier, now) if _WEIGHTS in now else (now, earlier)
    folder = recorded.split(_WEIGHTS)[0]
    return typed not in NAMED_REWARDS and folder in (str(Path(typed).resolve()), str(Path(typed).resolve() / "best"))


def _as_named(identity: str | None, named: dict[str, str | Path]) -> str | None:
    """``identity`` as the name of the named reward whose folder it records (a path identity with its
    weights, or a folder as typed in an older record); else itself."""
    if identity is None or identity in named:
        return identity
    folder = identity.split(_WEIGHTS)[0]
    for name, named_folder in named.items():
        if Path(folder).resolve() == Path(named_folder).resolve():
            return name
    return identity
