"""Rectified-flow training of the shapes model, resumable bit for bit from its checkpoints."""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextModel

from l2s.errors import L2SError, ModelLoadError
from l2s.files import DamagedFileError, changed_settings, output_lock, remove_outputs
from l2s.run_folders import DAMAGED

from .data import SceneDataset, atomic_save, load_or_render_dataset
from .export import export
from .configs import TrainSettings
from .model import ShapesModelConfig, ShapesT5EncoderModel, build_shapes_pipeline, images_to_latents
from .surgery import grow_transformer, repatch_transformer


def learning_rate(settings: TrainSettings, step: int) -> float:
    """Linear warm-up, then cosine decay to ``final_lr_fraction`` of the peak at the last step."""
    if step < settings.warmup:
        return settings.lr * (step + 1) / settings.warmup
    progress = min(1.0, (step - settings.warmup) / max(1, settings.steps - settings.warmup))
    floor = settings.final_lr_fraction
    return settings.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def sample_sigmas(kind: str, count: int, generator: torch.Generator, device) -> torch.Tensor:
    """Noise levels in (0, 1): logit-normal(0, 1) (SD3's choice) or uniform."""
    if kind == "logit-normal":
        return torch.sigmoid(torch.randn(count, generator=generator, device=device))
    if kind == "uniform":
        return torch.rand(count, generator=generator, device=device)
    raise L2SError(f"unknown sigma sampling {kind!r} (logit-normal or uniform)")


class ShapesTrainer:
    """Rectified-flow training of a shapes pipeline's transformer and T5 encoder.

    Conventions match FluxPipeline's sampler: ``x_t = (1 - σ) x0 + σ ε`` and the transformer,
    given ``timestep=σ`` (the pipeline passes ``t / 1000`` with ``t = 1000 σ``), predicts the
    velocity ``ε - x0``; the Euler scheduler steps ``x += (σ_next - σ) v``.
    """

    def __init__(self, settings: TrainSettings, dataset: SceneDataset, device: str = "cpu") -> None:
        self.settings = settings
        self.device = torch.device(device)
        self.dataset = dataset
        model_config = ShapesModelConfig.from_dict(settings.model)
        self.pipe = build_shapes_pipeline(model_config, seed=settings.seed).to(self.device)
        self.trained = {"transformer": self.pipe.transformer, "text_encoder_2": self.pipe.text_encoder_2}
        if settings.init_from:
            self._load_initial_weights(Path(settings.init_from))
        self.pipe.text_encoder.requires_grad_(False)
        self.ema = {name: {k: v.detach().clone() for k, v in module.state_dict().items()}
                    for name, module in self.trained.items()}
        params = [p for module in self.trained.values() for p in module.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr, betas=(0.9, 0.99),
                                           weight_decay=settings.weight_decay)
        # One generator for batches, noise and sigmas: its state makes resumption exact.
        self.generator = torch.Generator(device=self.device).manual_seed(settings.seed)
        self.step = 0
        self.steps_resumed = 0   # steps an earlier run had made when this call started
        self.last_loss = float("nan")
        self.smoothed_loss: float | None = None  # running mean of the loss, kept across resumes
        self.elapsed = 0.0
        with torch.no_grad():  # constant pooled CLIP vector (see build_shapes_pipeline)
            self.pooled = self.pipe._get_clip_prompt_embeds([""], device=self.device)
        grid = model_config.image_size // (2 * model_config.vae_factor)
        self.image_ids = FluxPipeline._prepare_latent_image_ids(1, grid, grid, self.device, torch.float32)
        self.text_ids = torch.zeros(model_config.text_window, 3, device=self.device)

    def _load_initial_weights(self, folder: Path) -> None:
        """Start from a saved shapes pipeline (continued training); its architecture must match.

        The frozen CLIP encoder is loaded too: its constant pooled vector conditions every block, and
        a run with another seed would otherwise build a different one and start from scratch in effect.
        """
        loaders = {"transformer": FluxTransformer2DModel, "text_encoder_2": ShapesT5EncoderModel,
                   "text_encoder": CLIPTextModel}
        for name, cls in loaders.items():
            try:
                saved = cls.from_pretrained(str(folder / name), local_files_only=True)
                if name == "transformer" and self.settings.repatch:
                    repatch_transformer(self.pipe.transformer, saved)
                elif name == "transformer" and self.settings.grow:
                    grow_transformer(self.pipe.transformer, saved)
                else:
                    getattr(self.pipe, name).load_state_dict(saved.state_dict())
            except (OSError, ValueError, RuntimeError) as error:
                hint = ("" if self.settings.grow or self.settings.repatch else
                        "; --grow starts a deeper model from a shallower one, --repatch one with other patches")
                raise ModelLoadError(f"--init-from {folder}: cannot load {name} into this model config "
                                     f"({str(error).splitlines()[0]}){hint}") from None

    # -- one step ------------------------------------------------------------------------
    def loss(self, images: torch.Tensor, token_ids: torch.Tensor, sigmas: torch.Tensor,
             noise: torch.Tensor) -> torch.Tensor:
        x0 = images_to_latents(self.pipe, images.to(self.device))
        s = sigmas.view(-1, 1, 1)
        x_t = (1 - s) * x0 + s * noise
        text = self.pipe.text_encoder_2(token_ids.to(self.device))[0]
        velocity = self.pipe.transformer(
            hidden_states=x_t, timestep=sigmas, pooled_projections=self.pooled.expand(len(x0), -1),
            encoder_hidden_states=text, txt_ids=self.text_ids, img_ids=self.image_ids, return_dict=False)[0]
        return F.mse_loss(velocity, noise - x0)

    def train_step(self) -> float:
        settings = self.settings
        for module in self.trained.values():
            module.train()
        index = torch.randint(len(self.dataset.images), (settings.batch_size,), generator=self.generator,
                              device=self.device).cpu()
        sigmas = sample_sigmas(settings.sigma_sampling, settings.batch_size, self.generator, self.device)
        grid_tokens = self.image_ids.shape[0]
        channels = self.pipe.transformer.config.in_channels
        noise = torch.randn(settings.batch_size, grid_tokens, channels, generator=self.generator,
                            device=self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(settings, self.step)
        loss = self.loss(self.dataset.images[index], self.dataset.token_ids[index], sigmas, noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        self.last_loss = float(loss.detach())
        return self.last_loss

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up form of the decay: early averages are not dominated by the random initialisation.
        decay = min(self.settings.ema_decay, (1 + self.step) / (10 + self.step))
        for name, module in self.trained.items():
            for key, value in module.state_dict().items():
                average = self.ema[name][key]
                if value.is_floating_point():
                    average.lerp_(value, 1 - decay)
                else:
                    average.copy_(value)

    # -- checkpoints ---------------------------------------------------------------------
    def state(self) -> dict:
        """Everything needed to continue bit-for-bit: tensors and primitives only."""
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return {
            "step": self.step, "last_loss": self.last_loss, "smoothed_loss": self.smoothed_loss,
            "elapsed": self.elapsed,
            "settings": json.dumps(self.settings.run_identity()),
            "weights": {name: module.state_dict() for name, module in self.trained.items()},
            "ema": self.ema,
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": cuda_rng,
        }

    def save_checkpoint(self, path: Path) -> None:
        atomic_save(self.state(), path)

    def load_checkpoint(self, path: Path) -> None:
        """Continue from ``path``; a damaged file (truncated, garbled, not ours) is one line saying
        how to recover, never a traceback."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            stored = json.loads(state["settings"])
        except DAMAGED as error:
            raise _damaged(path, error) from None
        stored.setdefault("grow", False)  # checkpoints from before --grow existed
        stored.setdefault("repatch", False)  # ... or --repatch
        if differing := changed_settings(stored, self.settings.run_identity()):
            raise L2SError(f"{path} was written by a run with other settings ({', '.join(differing)}); "
                           "use another --out or --restart to start afresh")
        try:
            self._restore(state)
        except DAMAGED as error:
            raise _damaged(path, error) from None

    def _restore(self, state: dict) -> None:
        for name, module in self.trained.items():
            module.load_state_dict(state["weights"][name])
            for key, value in state["ema"][name].items():
                self.ema[name][key] = value.to(self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step, self.last_loss, self.elapsed = state["step"], state["last_loss"], state["elapsed"]
        self.smoothed_loss = state.get("smoothed_loss")  # absent in checkpoints of older versions

    # -- export --------------------------------------------------------------------------
    def ema_pipeline(self) -> FluxPipeline:
        """The pipeline with EMA weights (on CPU, eval mode), ready to save or sample."""
        model_config = ShapesModelConfig.from_dict(self.settings.model)
        pipe = build_shapes_pipeline(model_config, seed=self.settings.seed)
        pipe.transformer.load_state_dict(self.ema["transformer"])
        pipe.text_encoder_2.load_state_dict(self.ema["text_encoder_2"])
        # The frozen CLIP encoder trained with (from --init-from, or built from the seed).
        pipe.text_encoder.load_state_dict(self.pipe.text_encoder.state_dict())
        return pipe


def _damaged(path: Path, error: Exception) -> DamagedFileError:
    return DamagedFileError(f"{path} is damaged ({type(error).__name__}); rerun with --restart "
                            "(resume=False in Python) "
                            f"to train from the start, or delete {path}")


def train(settings: TrainSettings, out: Path, device: str = "cpu", resume: bool = True,
          progress: bool = True, command: str | None = None, stop_at_step: int | None = None,
          time_limit_s: float | None = None) -> ShapesTrainer:
    """Train (or continue training) into ``out``; export the EMA pipeline to ``out / "pipeline"``.

    ``out`` holds ``checkpoint.pt`` (latest state), the scene cache and, at the end, ``pipeline/``
    (diffusers format, safetensors) with ``training.json`` and ``TRAINING.md`` beside the weights.
    ``stop_at_step`` ends this invocation early as an interruption would: the checkpoint is saved
    (a later call resumes exactly) and nothing is exported. ``time_limit_s`` also stops early but
    exports the EMA weights reached so far (``training.json`` says ``"completed": false``); running
    the same command again resumes and finishes the run.
    """
    out = Path(out)
    with output_lock(out, kind="train-model"):  # one trainer per run directory: a second one is refused before any work
        return _train(settings, out, device, resume, progress, command, stop_at_step, time_limit_s)


def _train(settings: TrainSettings, out: Path, device: str, resume: bool, progress: bool, command: str | None,
           stop_at_step: int | None, time_limit_s: float | None) -> ShapesTrainer:
    from tqdm.auto import tqdm

    checkpoint = out / "checkpoint.pt"
    if not resume:   # first: a kill before the first new checkpoint must not resume the old run
        remove_outputs(out, [checkpoint.name], "starting the training over")
    torch.manual_seed(settings.seed)
    dataset = load_or_render_dataset(out, progress, count=settings.scenes, seed=settings.seed, size=settings.size,
                                     relation_caption_rate=settings.relation_caption_rate,
                                     n_objects=tuple(settings.n_objects),
                                     object_sizes=tuple(settings.object_sizes),
                                     window=settings.model["text_window"])
    trainer = ShapesTrainer(settings, dataset, device)
    if resume and checkpoint.is_file():
        trainer.load_checkpoint(checkpoint)
        trainer.steps_resumed = trainer.step
    bar = tqdm(total=settings.steps, initial=trainer.step, desc="training", disable=not progress,
               mininterval=5, dynamic_ncols=True)
    if trainer.steps_resumed and trainer.step < settings.steps and progress:
        bar.write(f"l2s: resuming after step {trainer.step} of {settings.steps}")
    started_run = time.monotonic()
    with _interrupt_between_steps() as interrupted:
        while trainer.step < settings.steps:
            if stop_at_step is not None and trainer.step >= stop_at_step:
                trainer.save_checkpoint(checkpoint)
                bar.close()
                return trainer
            if time_limit_s is not None and time.monotonic() - started_run > time_limit_s:
                trainer.save_checkpoint(checkpoint)
                break
            _timed_step(trainer, bar)
            if interrupted():
                trainer.save_checkpoint(checkpoint)
                bar.close()
                stop = KeyboardInterrupt()
                stop.l2s_message = (f"l2s: interrupted after step {trainer.step} (saved); rerun the same command "
                                    "to resume")
                stop.signum = interrupted.signum
                raise stop
            if trainer.step % settings.checkpoint_every == 0 or trainer.step == settings.steps:
                trainer.save_checkpoint(checkpoint)
    bar.close()
    export(trainer, out / "pipeline", device=device, command=command)
    return trainer


@contextmanager
def _interrupt_between_steps() -> Iterator[Callable[[], bool]]:
    """A first Ctrl-C or SIGTERM (a scheduler's or container's stop) ends the run after the step it
    fell in (the caller saves every finished step then); a second one stops at once. Outside the
    main thread signals cannot be caught: no-op."""
    signals = [s for s in (signal.SIGINT, signal.SIGTERM)
               if signal.getsignal(s) not in (signal.SIG_IGN, None)]   # ignored, or not Python's to change
    if threading.current_thread() is not threading.main_thread() or not signals:
        yield lambda: False
        return
    asked: list[int] = []
    lead = "\n" if sys.stderr.isatty() else ""   # on a terminal, after the progress bar; a log gets no blank line

    def ask(signum, frame) -> None:
        if asked:
            stop = KeyboardInterrupt()
            stop.signum = signum       # the command line's exit code names the signal
            raise stop
        asked.append(signum)
        again = "Ctrl-C again" if signum == signal.SIGINT else "a second signal"
        said = f"{lead}l2s: finishing this training step to save it ({again} stops at once)\n"
        os.write(2, said.encode())  # reentrant

    def interrupted() -> bool:
        interrupted.signum = asked[0] if asked else None
        return bool(asked)

    previous = {s: signal.signal(s, ask) for s in signals}
    try:
        yield interrupted
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _timed_step(trainer: ShapesTrainer, bar) -> None:
    """One training step, with its wall time, the running mean of the loss and the progress bar."""
    started = time.perf_counter()
    loss = trainer.train_step()
    trainer.elapsed += time.perf_counter() - started
    previous = trainer.smoothed_loss
    trainer.smoothed_loss = loss if previous is None else 0.98 * previous + 0.02 * loss
    bar.update()
    bar.set_postfix(loss=f"{trainer.smoothed_loss:.4f}", lr=f"{learning_rate(trainer.settings, trainer.step - 1):.2e}",
                    refresh=False)
