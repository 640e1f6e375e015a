"""What the diffusers-native steering pipelines share: the objective, borrowed modules, the callback.

A native pipeline is the family's stock diffusers pipeline plus steering. Its ``__call__`` runs the
stock ``__call__`` unchanged and steers inside it: step 0 on the initial latents before the loop,
step ``i + 1`` from the ``callback_on_step_end`` of step ``i`` (under ``torch.enable_grad``), so
every stock feature (output types, CFG, progress bar configuration, offload hooks) behaves as stock.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

import torch

from l2s.errors import UsageError
from l2s.steer import (
    DEFAULT_CAPTURE_BACKEND,
    DenoiserCall,
    Schedule,
    SteeringDiagnostics,
    SteeringObjective,
    execution_mode,
    refine_latents,
    schedule_preset,
    validate_step_size,
)
from l2s.values import positive_int

from ..arguments import (base_model_warning, check_base_family, check_capture_kernels, check_classifier_argument,
                         checked_capture_backend, checked_schedule, say_once)
from ..loading import model_steering_defaults
from .plans import PromptSteering, SteeredRows

log = logging.getLogger(__name__)

# The batch rows a steered forward runs: a slice, or the indices of non-adjacent prompts' rows.
Rows = slice | list[int]


def unwrapped(module: torch.nn.Module) -> torch.nn.Module:
    """The module itself, or the module that ``torch.compile`` wrapped."""
    return getattr(module, "_orig_mod", module)


class PipelineObjective(SteeringObjective):
    """The steering objective on the pipeline's *execution* device (where cpu offload runs the model),
    not the device the weights rest on."""

    def __init__(self, pipe, denoiser: torch.nn.Module, classifier, mode: str, capture_backend: str) -> None:
        self._pipe = pipe
        super().__init__(denoiser, classifier, mode, capture_backend)

    @property
    def device(self) -> torch.device:
        return self._pipe._execution_device


@contextlib.contextmanager
def borrowed(frozen: list[torch.nn.Module], evaluated: list[torch.nn.Module],
             denoiser: torch.nn.Module) -> Iterator[None]:
    """Freeze ``frozen`` and put ``evaluated`` in eval mode for the duration of a call, then put back
    exactly what the user had: every parameter's ``requires_grad``, every submodule's train/eval
    mode, and the denoiser's attention processors."""
    processors = dict(denoiser.attn_processors) if hasattr(denoiser, "attn_processors") else None
    try:
        with contextlib.ExitStack() as stack:
            for module in {id(m): m for m in [*frozen, *evaluated]}.values():
                stack.enter_context(_lent(module, freeze=any(module is m for m in frozen),
                                          evaluate=any(module is m for m in evaluated)))
            yield
    finally:
        if processors is not None and any(a is not b for a, b in zip(denoiser.attn_processors.values(),
                                                                       processors.values())):
            denoiser.set_attn_processor(processors)


# Modules lent to calls still running, by id: (calls holding it, what the user had). Pipelines over other
# modules may share a classifier and run at once; only the last call to end may give it back.
_LENT: dict[int, tuple[int, list, list]] = {}
_LENT_GUARD = threading.Lock()


@contextlib.contextmanager
def _lent(module: torch.nn.Module, freeze: bool, evaluate: bool) -> Iterator[None]:
    """``module`` frozen and/or in eval mode while any call holds it; the last to end restores it."""
    with _LENT_GUARD:
        count, flags, modes = _LENT.get(id(module)) or (
            0, [(p, p.requires_grad) for p in module.parameters()] if freeze else [],
            [(m, m.training) for m in module.modules()] if evaluate else [])
        _LENT[id(module)] = (count + 1, flags, modes)
        if freeze:
            module.requires_grad_(False)
        if evaluate:
            module.eval()
    try:
        yield
    finally:
        with _LENT_GUARD:
            count, flags, modes = _LENT.pop(id(module))
            if count > 1:
                _LENT[id(module)] = (count - 1, flags, modes)
            else:
                for parameter, flag in flags:
                    parameter.requires_grad_(flag)
                for each, training in modes:
                    each.training = training


def resolve_schedule(schedule: Schedule | str, family: str, steps: int, step_size: float | None) -> Schedule:
    """A preset name resolved for ``family`` over ``steps`` denoising steps, or a schedule that fits."""
    if isinstance(schedule, str):
        try:
            return schedule_preset(schedule, family, steps, step_size)
        except ValueError as error:
            raise UsageError(str(error)) from None
    if not isinstance(schedule, Schedule):
        raise UsageError(f"steering_schedule must be a preset name or a Schedule, got {type(schedule).__name__}")
    if schedule.num_steps != steps:
        raise UsageError(f"schedule {schedule.name!r} covers {schedule.num_steps} steps, "
                         f"generation uses {steps}")
    return schedule


def checked_prompts(prompt, steer) -> list[str]:
    """The call's prompts as a list; a ``UsageError`` for what the stock call would fail on deep inside."""
    if not isinstance(steer, bool):
        raise UsageError(f"steer must be True or False, got {steer!r}")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise UsageError(f"prompt must be a string or a non-empty list of strings, got {prompt!r:.80}")
    return list(prompts)


def checked_step_size(step_size: float | None) -> float | None:
    if step_size is None:
        return None
    try:
        return validate_step_size(step_size)
    except ValueError as error:
        raise UsageError(str(error)) from None


# steer_rows(latents, step) -> latents: steer the images of every prompt steered at ``step``.
SteerFn = Callable[[torch.Tensor, int], torch.Tensor]


def steering_callback(user_callback, tensor_inputs, steer: SteerFn, steered_steps: set[int]):
    """A ``callback_on_step_end`` that runs the user's callback, then steers the next step's latents."""
    asked = asked_tensor_inputs(user_callback, tensor_inputs)

    def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        outputs = {}
        if user_callback:
            # Only the tensors it asked for, as stock hands them: the latents may be there for steering alone.
            shown = {name: tensor for name, tensor in callback_kwargs.items() if name in asked}
            outputs = dict(user_callback(pipe, step, timestep, shown) or {})
        if step + 1 in steered_steps and not pipe.interrupt:
            outputs["latents"] = steer(outputs.get("latents", callback_kwargs["latents"]), step + 1)
        return outputs

    return on_step_end


def asked_tensor_inputs(user_callback, tensor_inputs) -> list[str]:
    """The tensors the user's callback asks for: a diffusers callback object names its own."""
    from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

    if isinstance(user_callback, (PipelineCallback, MultiPipelineCallbacks)):
        tensor_inputs = user_callback.tensor_inputs
    return list(tensor_inputs or [])


def callback_inputs(user_callback, tensor_inputs) -> list[str]:
    """The tensors the stock loop hands the callback: the user's, plus the latents steering needs."""
    names = asked_tensor_inputs(user_callback, tensor_inputs)
    return names if "latents" in names else ["latents", *names]


class RelationSteeringMixin:
    """The family-independent half of a native steering pipeline (mixed into a diffusers pipeline).

    The family class provides ``steering_family()`` (the published settings that apply) and its
    ``__call__``; the mixin keeps one steering objective per (denoiser, classifier) and refines
    the latent rows of the steered prompts, together.
    """

    denoiser_name: str
    steering_families: tuple[str, ...]      # whose published settings may be named
    _steering_objective: PipelineObjective | None = None

    def _register_steering(self, classifier, steering_schedule, steering_step_size, steering_mode,
                           capture_backend, steering_family) -> None:
        # Checked here, not at the first steered call (after the prompts were encoded).
        if classifier is not None:     # None: an unsteered pipeline until one is set
            check_classifier_argument(classifier)
        if execution_mode(steering_mode or "fast").compile_steering and self.denoiser_name != "transformer":
            raise UsageError(f"steering_mode {steering_mode!r} compiles FLUX's steered forward; "
                             f"{type(self).__name__} has none: use steering_mode='fast'")
        checked_capture_backend(capture_backend or DEFAULT_CAPTURE_BACKEND, steering_mode or "fast")
        checked_schedule(steering_schedule)
        if steering_family is not None and steering_family not in self.steering_families:
            raise UsageError(f"steering_family must be one of {', '.join(self.steering_families)}, "
                             f"got {steering_family!r}")
        self.register_modules(classifier=classifier)
        self.register_to_config(steering_schedule=steering_schedule,
                                steering_step_size=checked_step_size(steering_step_size),
                                steering_mode=steering_mode, capture_backend=capture_backend,
                                steering_family=steering_family)

    def _announce(self, steerings: list[PromptSteering], grid_line: str | None = None) -> None:
        """Log what makes this call's steering doubtful, once per pipeline; a classifier trained on
        another model's maps and ``grid_line`` (the maps' grid) also go in each steered prompt's
        report, beside its plan's warnings."""
        steered = [steering for steering in steerings if steering.steered]
        classifier = getattr(self, "classifier", None)
        base_line = base_model_warning(self, classifier) if steered and classifier is not None else None
        lines = [line for line in (base_line, grid_line) if line]
        for steering in steered:
            steering.warnings += lines
            say_once(self, [*steering.plan.warnings, *lines])

    @classmethod
    def from_pipe(cls, pipeline, **kwargs):
        """This pipeline on ``pipeline``'s modules (shared, not copied), plus ``classifier=`` and the
        steering options. Components of any class are taken over (a custom VAE, a compiled model).

        Unlike ``DiffusionPipeline.from_pipe``, which casts the shared modules to float32 unless told
        otherwise, the modules keep their dtypes; ``torch_dtype=`` casts them, as there.
        """
        dtype = kwargs.pop("torch_dtype", None) or kwargs.pop("dtype", None)
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise UsageError(f"torch_dtype must be a torch.dtype (e.g. torch.bfloat16), got {dtype!r}")
        expected, optional = cls._get_signature_keys(cls)
        unknown = sorted(set(kwargs) - set(expected) - set(optional))
        if unknown:
            raise TypeError(f"{cls.__name__}.from_pipe() got unexpected arguments {unknown}")
        components = {k: v for k, v in pipeline.components.items() if k in expected}
        options = {k: v for k, v in pipeline.config.items() if k in optional}   # e.g. requires_safety_checker
        new = cls(**{**components, **options, **kwargs})
        if pipeline.config.get("_name_or_path") is not None:
            new.register_to_config(_name_or_path=pipeline.config["_name_or_path"])
        if dtype is not None:
            new.to(dtype=dtype)
        return new

    def save_pretrained(self, save_directory, *args, **kwargs):
        """The stock ``save_pretrained`` of every module but the classifier, which diffusers cannot
        save: reload with ``from_pretrained(dir, classifier=RelationClassifier.load(...))``."""
        classifier = getattr(self, "classifier", None)
        if classifier is None:
            return self._save_following_umask(save_directory, *args, **kwargs)
        self.register_modules(classifier=None)     # not a diffusers component: left out, not warned about
        try:
            return self._save_following_umask(save_directory, *args, **kwargs)
        finally:
            self.register_modules(classifier=classifier)
            log.info("%s: the relation classifier is not saved with the pipeline; save it with its own "
                     "save() and pass classifier= to from_pretrained", save_directory)

    def _save_following_umask(self, save_directory, *args, **kwargs):
        from l2s.files import follow_umask

        saved = super().save_pretrained(save_directory, *args, **kwargs)
        follow_umask(save_directory)   # diffusers' safetensors files are 0600 otherwise
        return saved

    @property
    def steering_denoiser(self) -> torch.nn.Module:
        """The denoiser that steered passes run: the user's, unwrapped from ``torch.compile``."""
        return unwrapped(getattr(self, self.denoiser_name))

    def steering_classifier(self):
        """The relation classifier; a ``UsageError`` saying how to add one when there is none."""
        classifier = getattr(self, "classifier", None)
        if classifier is None:
            raise UsageError("this pipeline has no relation classifier: build it with "
                             f"{type(self).__name__}.from_pipe(pipe, classifier=...) or pass steer=False")
        return classifier

    def objective(self) -> PipelineObjective:
        """The steering objective for the current denoiser and classifier (made once, then kept)."""
        classifier = self.steering_classifier()
        denoiser, cached = self.steering_denoiser, self._steering_objective
        if cached is None or cached.denoiser is not denoiser or cached.classifier is not classifier:
            backend = self.config.capture_backend or DEFAULT_CAPTURE_BACKEND
            check_capture_kernels(backend, self._execution_device)   # where offloaded steps run
            objective = PipelineObjective(self, denoiser, classifier, self.config.steering_mode or "fast", backend)
            self._check_fits(objective)     # kept only once it fits: every call checks until then
            self._steering_objective = objective
        return self._steering_objective

    def _check_fits(self, objective: PipelineObjective) -> None:
        """The classifier reads this model's kind of maps (FLUX or Stable Diffusion), as many as it gives."""
        from l2s.errors import ClassifierMismatchError

        check_base_family(self, objective.classifier)
        expected, provided = objective.classifier.config.channels, objective.map_channels()
        if expected != provided:
            raise ClassifierMismatchError(
                f"classifier expects {expected} maps per object but this {type(self).__name__} provides "
                f"{provided} (layers x heads); use a classifier trained for this model")

    def borrowed_modules(self):
        """What a steered call freezes (and restores after): the denoiser and the classifier."""
        classifier = [self.classifier] if getattr(self, "classifier", None) is not None else []
        return borrowed([self.steering_denoiser, *classifier], classifier, self.steering_denoiser)

    def steering_schedule_for(self, schedule, steps: int) -> Schedule:
        positive_int(steps, "num_inference_steps")    # named as the call's argument, not the schedule's
        schedule = self.config.steering_schedule if schedule is None else schedule
        return resolve_schedule(schedule or "reference", self.steering_family(), steps, self.steering_step_size())

    def steering_step_size(self) -> float | None:
        """The named schedules' step size: configured, else the model's own (a shapes model's, as
        ``wrap_pipeline`` gives it), else None (the family's published one)."""
        if self.config.steering_step_size is not None:
            return self.config.steering_step_size
        return model_steering_defaults(self).get("step_size")

    def steer_rows(self, latents: torch.Tensor, step: int, steered: SteeredRows | None,
                   run_rows: Callable[[Rows, torch.Tensor], object], text_len: int,
                   latent_hw: tuple[int, int], inputs: Callable[[Rows, torch.Tensor], dict] | None = None,
                   ) -> torch.Tensor:
        """Refine the latent rows of every prompt steered at ``step`` in one batch (each image with
        its prompt's plan and its own exit), then hand each prompt its images' records.

        ``run_rows(rows, z)`` runs the conditional denoiser forward of those batch rows on ``z``;
        ``inputs(rows, z)`` (FLUX) gives its keyword arguments, for the steered forward.
        """
        if steered is None or not steered.schedule.is_steered(step):
            return latents
        objective, latents, rows = self.objective(), latents.clone(), steered.rows
        self._onload_denoiser()
        call = DenoiserCall(lambda z: run_rows(rows, z), None if inputs is None else (lambda z: inputs(rows, z)))
        diagnostics = SteeringDiagnostics()
        with objective.at_step(steered.plan, step, call, text_len, latent_hw) as log_prob:
            latents[rows] = refine_latents(latents[rows], step, log_prob, steered.schedule, steered.counts,
                                           diagnostics)
        steered.record(diagnostics)
        return latents

    def _onload_denoiser(self) -> None:
        """With cpu offload hooked on a compiled wrapper, move the model to the execution device
        before steered passes, which run the module inside the wrapper (the hook's own move)."""
        outer = getattr(self, self.denoiser_name)
        hook = getattr(outer, "_hf_hook", None)       # (a wrapper hands on its module's attributes)
        if outer is not unwrapped(outer) and hasattr(hook, "pre_forward"):
            hook.pre_forward(outer)

    def steering_family(self) -> str:
        raise NotImplementedError
