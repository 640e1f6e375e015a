"""l2s.steer: test-time steering of a latent, independent of the diffusion model's loop.

:class:`SteeringPlan` says what a prompt steers (:class:`BatchPlan`: one per image of a batch),
:class:`SteeringObjective` computes log p(target relation) of a latent through the denoiser's maps and
the classifier, :func:`refine_latents` takes gradient steps on it, and a :class:`Schedule` (or a
preset) says on which steps and how hard.
"""

from .batch import BatchPlan
from .compiled import CompiledSteering
from .modes import (
    CPU_MODES,
    DEFAULT_CAPTURE_BACKEND,
    MODES,
    ExecutionMode,
    compile_classifier,
    differentiable_sdpa,
    execution_mode,
)
from .objective import DenoiserCall, PreparedPlan, SteeringObjective
from .outcome import SteeringOutcome, disabled_by, steering_outcome
from .plan import RelationLike, SteeringPlan, parsed_from_relations, relations_per_prompt
from .presets import PRESETS, Preset, preset_steps, schedule_preset
from .refine import IterationRecord, LogProbFn, SteeringDiagnostics, refine_latents
from .schedule import (
    Schedule,
    custom_schedule,
    published_loss_target,
    reference_schedule,
    validate_step_size,
)

__all__ = [
    "BatchPlan",
    "CPU_MODES",
    "DEFAULT_CAPTURE_BACKEND",
    "CompiledSteering",
    "DenoiserCall",
    "ExecutionMode",
    "IterationRecord",
    "LogProbFn",
    "MODES",
    "PRESETS",
    "PreparedPlan",
    "RelationLike",
    "Preset",
    "Schedule",
    "SteeringDiagnostics",
    "SteeringObjective",
    "SteeringOutcome",
    "SteeringPlan",
    "compile_classifier",
    "custom_schedule",
    "differentiable_sdpa",
    "disabled_by",
    "execution_mode",
    "parsed_from_relations",
    "relations_per_prompt",
    "preset_steps",
    "published_loss_target",
    "reference_schedule",
    "refine_latents",
    "schedule_preset",
    "steering_outcome",
    "validate_step_size",
]
