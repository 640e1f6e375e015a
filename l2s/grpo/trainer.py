"""One GRPO epoch on a FluxPipeline: sample groups, score them, train the adapter on the ratios.

The policy is the pipeline's transformer with a LoRA adapter; the reference policy is the same
network with the adapter switched off. Processes of a data-parallel run (``accelerate launch``)
each sample and score their share of the epoch's prompts; their adapter gradients are summed
over processes before every optimiser step, so all copies stay identical.
"""
from __future__ import annotations

import numpy as np
import torch

from l2s.errors import L2SError
from l2s.pipelines.families import pixels_per_token
from .advantages import centred_rewards, global_spread, group_advantages, top_k_mask
from .ema import AdapterEMA
from .lora import adapter_parameters, add_lora
from .objective import grpo_loss
from .rollout import Rollout, encode_prompts, flow_schedule, predict_velocity, sample
from .sde import sde_step, step_kl
from .settings import GRPOSettings


def seeds_for(seed: int, *keys: int, count: int) -> list[int]:
    """``count`` seeds derived from ``(seed, *keys)``: reproducible without stored RNG state."""
    return [int(s) for s in np.random.SeedSequence([seed, *keys]).generate_state(count)]


def checked_rewards(values: torch.Tensor, images: int, fn) -> torch.Tensor:
    """``values`` when they are one finite reward per image: a NaN would turn the adapter into NaNs
    that the checkpoint then keeps, and a miscount would pair rewards with the wrong images."""
    name = getattr(fn, "__name__", type(fn).__name__)
    if values.numel() != images:
        raise L2SError(f"the reward {name} returned {values.numel()} values for {images} images: it must return "
                       "one per image")
    if not torch.isfinite(values).all():
        bad = int((~torch.isfinite(values)).sum())
        raise L2SError(f"the reward {name} returned {bad} non-finite value(s) (NaN or inf) for {images} images: "
                       "fix the reward so that every image gets a finite score")
    return values


class GRPOTrainer:
    """Holds the pipeline, its adapter, optimiser and EMA, and runs epochs (:meth:`epoch`)."""

    def __init__(self, pipe, reward, settings: GRPOSettings, accelerator) -> None:
        self.pipe, self.reward, self.settings, self.acc = pipe, reward, settings, accelerator
        self.reward_name: str | None = None  # what ``reward`` is, for the run's record (set by the run)
        self.base_model: str | None = None   # what ``pipe`` is, likewise
        self.named_rewards: dict | None = None   # named rewards' folders (l2s.reward.identity.same_reward)
        for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.requires_grad_(False)
        pipe.to(accelerator.device)
        self.size = settings.size or int(getattr(pipe.vae.config, "sample_size", 0) or
                                          pipe.default_sample_size * pipe.vae_scale_factor)
        self.model = add_lora(pipe.transformer, settings.lora_rank, settings.lora_alpha, settings.seed)
        self.params = adapter_parameters(self.model)
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=settings.lr, weight_decay=settings.weight_decay)
        self.ema = AdapterEMA(self.params, settings.ema_decay)
        self.optimizer_steps = 0
        tokens = (self.size // pixels_per_token(pipe)) ** 2
        self.schedule = flow_schedule(pipe, settings.steps, tokens, accelerator.device)

    # -- sampling and scoring --------------------------------------------------------------
    def conditioning(self, prompts: list[str]):
        s = self.settings
        return encode_prompts(self.pipe, prompts, s.true_cfg, self.size, self.acc.device, s.max_sequence_length,
                              s.guidance)

    def rollout(self, prompts: list[str], seeds: list[int], noise_level: float, bar=None):
        """One image per seed, ``len(seeds) / len(prompts)`` per prompt (rows grouped by prompt)."""
        s = self.settings
        cond = self.conditioning(prompts)
        index = torch.arange(len(prompts), device=self.acc.device).repeat_interleave(len(seeds) // len(prompts))
        self.model.eval()
        rollout = sample(self.model, self.pipe, cond, self.schedule, index, seeds, self.size, noise_level,
                         s.trained_steps if noise_level else 0, s.chunk, bar)
        return rollout, cond

    def score(self, fn, rollout: Rollout, prompts: list[str]) -> torch.Tensor:
        texts = [prompts[int(i)] for i in rollout.prompt_index]
        values = torch.as_tensor(fn(rollout.images, texts), dtype=torch.float32).reshape(-1)
        return checked_rewards(values, len(texts), fn).to(self.acc.device)

    def advantages(self, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(advantages, kept mask), both (prompts, G)."""
        s = self.settings
        keep = top_k_mask(rewards, s.top_k)
        spread = None
        if s.std == "global":  # one spread over every process's kept rewards
            centred = centred_rewards(rewards, keep)
            squares = self.acc.gather(centred[keep] ** 2)
            spread = float(squares.mean().sqrt()) if squares.numel() else float(global_spread(centred, keep))
        return group_advantages(rewards, keep, s.std, s.adv_clip, global_std=spread), keep

    # -- training --------------------------------------------------------------------------
    def step_terms(self, rollout: Rollout, rows: torch.Tensor, j: int, cond, with_kl: bool):
        """Re-score step ``j`` of ``rows`` under the current adapter: (SDEStep, KL to the reference or None)."""
        s = self.settings
        x, target = rollout.latents[rows, j], rollout.latents[rows, j + 1]
        index = rollout.prompt_index[rows]
        sigma, sigma_next = self.schedule.sigmas[j], self.schedule.sigmas[j + 1]
        cap = float(self.schedule.sigmas[1])
        v = predict_velocity(self.model, x, self.schedule.timesteps[j], cond, index)
        step = sde_step(v, x, sigma, sigma_next, s.noise_level, cap, prev_sample=target)
        kl = None
        if with_kl:
            with torch.no_grad(), self.model.disable_adapter():
                v_ref = predict_velocity(self.model, x, self.schedule.timesteps[j], cond, index)
                ref = sde_step(v_ref, x, sigma, sigma_next, s.noise_level, cap, prev_sample=target)
            kl = step_kl(step.mean, ref.mean, step.std)
        return step, kl

    def train(self, rollout: Rollout, advantages: torch.Tensor, cond, generator: torch.Generator,
              bar=None) -> dict:
        """``optimizer_steps`` AdamW steps on the rows with a non-zero advantage; returns log stats
        (the loss terms' means over every process; ``first_ratio`` and ``trained_rows`` this process's)."""
        s = self.settings
        flat = advantages.reshape(-1)
        rows = torch.nonzero(flat != 0).flatten().cpu()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        stats = {"policy": [], "kl": [], "ratio": [], "clip_fraction": []}
        first_ratio = None
        self.model.train()
        for part in torch.tensor_split(rows, s.optimizer_steps):
            total = int(self.acc.reduce(torch.tensor(len(part), device=self.acc.device), reduction="sum"))
            if total == 0:
                continue
            self.optimizer.zero_grad(set_to_none=False)
            for chunk in torch.split(part, s.chunk):
                chunk = chunk.to(self.acc.device)
                for j in range(s.trained_steps):
                    with_kl = s.beta > 0 or j == 0  # with beta 0 the log's KL is step 0's only
                    step, kl = self.step_terms(rollout, chunk, j, cond, with_kl)
                    terms = grpo_loss(step.log_prob, rollout.log_probs[chunk, j], flat[chunk], s.clip_range,
                                      kl, s.beta)
                    (terms.loss * len(chunk) / (total * s.trained_steps)).backward()
                    first_ratio = terms.ratio if first_ratio is None else first_ratio
                    for key in stats:
                        if key != "kl" or kl is not None:
                            stats[key].append(getattr(terms, key))
                    if bar is not None:
                        bar.update(len(chunk))
            self._apply_gradients()
        return {**self._all_process_means(stats), "trained_rows": len(rows), "first_ratio": first_ratio}

    def _all_process_means(self, stats: dict[str, list[float]]) -> dict[str, float | None]:
        """Each statistic's mean over every process's values (None where no process has one)."""
        sums = torch.tensor([[sum(values), len(values)] for values in stats.values()], dtype=torch.float64)
        totals = self.acc.reduce(sums.to(self.acc.device), reduction="sum").tolist()
        return {key: total / count if count else None for key, (total, count) in zip(stats, totals)}

    def _apply_gradients(self) -> None:
        """Sum the gradients over processes, clip, step, update the EMA."""
        params = list(self.params.values())
        for p in params:  # a process with no rows this step still joins the sum
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if self.acc.num_processes > 1:
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            flat = self.acc.reduce(flat, reduction="sum")
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
        torch.nn.utils.clip_grad_norm_(params, self.settings.grad_clip)
        self.optimizer.step()
        self.optimizer_steps += 1
        self.ema.step(self.optimizer_steps)

    # -- checkpoints -----------------------------------------------------------------------
    def state(self) -> dict:
        return {"adapter": {k: p.detach().cpu().clone() for k, p in self.params.items()},
                "optimizer": self.optimizer.state_dict(), "ema": self.ema.state_dict(),
                "optimizer_steps": self.optimizer_steps, "torch_rng": torch.get_rng_state()}

    def load_state(self, state: dict) -> None:
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(state["adapter"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer_steps = int(state["optimizer_steps"])
        torch.set_rng_state(state["torch_rng"])
