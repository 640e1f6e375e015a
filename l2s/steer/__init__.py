"""l2s.steer."""

from .schedule import (
    IterationRecord,
    PRESETS,
    Schedule,
    SteeringDiagnostics,
    custom_schedule,
    preset_steps,
    published_loss_target,
    reference_schedule,
    refine_latents,
    schedule_preset,
    validate_step_size,
)

__all__ = [
    "IterationRecord",
    "PRESETS",
    "Schedule",
    "SteeringDiagnostics",
    "custom_schedule",
    "preset_steps",
    "published_loss_target",
    "reference_schedule",
    "refine_latents",
    "schedule_preset",
    "validate_step_size",
]
