"""Export of a trained shapes model: the EMA pipeline, ``training.json`` and a ``TRAINING.md`` card."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from l2s.pipelines.loading import save_pipeline
from l2s.versions import software_versions

from .recipes import SHAPES_STEPS


def export(trainer, directory: Path, device: str, command: str | None) -> Path:
    """Save a :class:`~l2s.shapes.ShapesTrainer`'s EMA pipeline (safetensors) plus ``training.json``
    and ``TRAINING.md``."""
    save_pipeline(trainer.ema_pipeline(), directory)
    record = training_record(trainer, device, command)
    (directory / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    (directory / "TRAINING.md").write_text(training_markdown(record))
    return directory


def training_record(trainer, device: str, command: str | None) -> dict:
    """What ``training.json`` records: the command, settings, losses, time and library versions."""
    settings = trainer.settings
    params = sum(p.numel() for m in trainer.trained.values() for p in m.parameters())
    return {
        "command": command,
        "seed": settings.seed,
        "steps": trainer.step,
        "planned_steps": settings.steps,
        "completed": trainer.step >= settings.steps,
        "final_loss": trainer.last_loss,
        "final_loss_smoothed": trainer.smoothed_loss,
        "wall_time_s": round(trainer.elapsed, 1),
        "device": device,
        "trained_parameters": params,
        "settings": asdict(settings),
        "versions": software_versions(),
        "sampling": {"height": settings.size, "width": settings.size, "num_inference_steps": SHAPES_STEPS,
                     "guidance_scale": "ignored (no guidance embedding)",
                     "text_window": settings.model["text_window"]},
    }


def _continuation(s: dict) -> str:
    """How a continued run started from an earlier model (empty for a run from scratch)."""
    if not s.get("init_from"):
        return ""
    text = (f"\n- continued from the weights of `{s['init_from']}` (an earlier run's exported pipeline; "
            "its own TRAINING.md/training.json say how it was made)")
    if s.get("grow"):
        text += (f"; grown to {s['model']['double_layers']} double + {s['model']['single_layers']} single "
                 "blocks: its blocks first, each new block started as an identity (zero residual gates)")
    if s.get("repatch"):
        text += (f"; re-patched to tokens of {2 * s['model']['vae_factor']}x{2 * s['model']['vae_factor']} "
                 "pixels: its blocks, text and timestep embeddings kept, a fresh patch embedding and a "
                 "zeroed output projection")
    return text


def training_markdown(record: dict) -> str:
    """The ``TRAINING.md`` card of an exported model, from its ``training.json`` record."""
    s = record["settings"]
    origin = "continued from an earlier model (below)" if s.get("init_from") else "trained from scratch"
    return f"""# Shapes-world FLUX model

A FLUX-architecture text-to-image model of `l2s.shapes` scenes, {origin} by
`l2s shapes train-model` (rectified flow, EMA weights exported). Load it with
`l2s.shapes.load_shapes_pipeline(dir)` (or `FluxPipeline.from_pretrained(dir)` after
`import l2s.shapes.model`) and sample at {s['size']}x{s['size']} with {SHAPES_STEPS} steps (it is not
step-distilled: 4 steps leave blurry blobs).

- command: `{record['command']}`{_continuation(s)}
- seed {record['seed']}, {record['steps']} steps (of {record['planned_steps']} planned) of batch
  {s['batch_size']}, lr {s['lr']} (warm-up {s['warmup']}, cosine to {s['final_lr_fraction']}x), AdamW wd
  {s['weight_decay']}, EMA {s['ema_decay']}, sigma sampling {s['sigma_sampling']}
- data: {s['scenes']} scenes of {s['n_objects'][0]}-{s['n_objects'][1]} objects
  ({s['object_sizes'][0]}-{s['object_sizes'][1]} px), relation stated in {s['relation_caption_rate']:.0%} of captions
- final loss {record['final_loss']:.4f} (smoothed {record['final_loss_smoothed'] or float('nan'):.4f}),
  {record['trained_parameters']:,} trained parameters
- wall time {record['wall_time_s'] / 60:.1f} min on {record['device']}; torch {record['versions']['torch']},
  diffusers {record['versions']['diffusers']}
"""
