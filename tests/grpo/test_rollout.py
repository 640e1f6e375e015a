"""Sampling with log-probabilities: the ODE limit is FluxPipeline's own sampler, and a sampled
trajectory re-scored under the same weights gives back its log-probabilities exactly."""
import pytest
import torch

from l2s.grpo import GRPOTrainer, encode_prompts, flow_schedule, sample

from .conftest import PROMPTS, redness, tiny_settings


class OneProcess:
    """The parts of accelerate.Accelerator the trainer uses, for one process (no launcher)."""

    device = torch.device("cpu")
    num_processes, process_index, is_main_process = 1, 0, True

    def reduce(self, tensor, reduction="sum"):
        return tensor

    def gather(self, tensor):
        return tensor

    def wait_for_everyone(self):
        pass


@pytest.mark.parametrize("true_cfg", [1.0, 2.0])
def test_noise_free_sampling_is_the_flux_pipelines_sampler(tiny_pipe, true_cfg):
    prompt, seeds, steps = PROMPTS[0], [3, 4, 5], 4
    cond = encode_prompts(tiny_pipe, [prompt], true_cfg, 16, "cpu", max_sequence_length=32)
    schedule = flow_schedule(tiny_pipe, steps, 16, "cpu")
    ours = sample(tiny_pipe.transformer, tiny_pipe, cond, schedule, torch.zeros(3, dtype=torch.long), seeds, 16,
                  0.0, 0, chunk=2)
    for row, seed in enumerate(seeds):
        theirs = tiny_pipe(prompt, negative_prompt="" if true_cfg > 1 else None, true_cfg_scale=true_cfg,
                           num_inference_steps=steps, height=16, width=16, max_sequence_length=32,
                           generator=torch.Generator("cpu").manual_seed(seed), output_type="latent").images
        torch.testing.assert_close(ours.latents[row, -1], theirs[0], rtol=1e-5, atol=1e-5)
    assert ours.log_probs.shape == (3, 0) and len(ours.images) == 3


@pytest.mark.parametrize("true_cfg, chunk", [(2.0, 8), (1.0, 5)])
def test_the_importance_ratio_is_exactly_one_before_the_first_update(tiny_pipe, true_cfg, chunk):
    settings = tiny_settings(true_cfg=true_cfg, chunk=chunk, beta=0.1)
    trainer = GRPOTrainer(tiny_pipe, redness, settings, OneProcess())
    prompts = PROMPTS[:2]
    rollout, cond = trainer.rollout(prompts, list(range(100, 124)), settings.noise_level)
    assert rollout.log_probs.shape == (24, settings.trained_steps)
    # The rows top-k keeps, re-scored in the training chunks (other batches than at sampling).
    keep = torch.nonzero(torch.tensor([True, False, True] * 8)).flatten()
    for rows in torch.split(keep, 3):
        for j in range(settings.trained_steps):
            step, kl = trainer.step_terms(rollout, rows, j, cond, with_kl=True)
            assert torch.equal(step.log_prob, rollout.log_probs[rows, j])
            assert torch.equal(kl, torch.zeros(len(rows)))      # a fresh adapter is the base model
    # The training loop itself reports the first ratio it sees: exactly 1.
    rewards = trainer.score(redness, rollout, prompts).reshape(2, 12)
    advantages, _ = trainer.advantages(rewards)
    stats = trainer.train(rollout, advantages, cond, torch.Generator().manual_seed(0))
    assert stats["first_ratio"] == 1.0
    assert trainer.optimizer_steps == settings.optimizer_steps


def test_an_update_moves_the_ratio_and_the_kl(tiny_pipe):
    settings = tiny_settings(beta=0.1)
    trainer = GRPOTrainer(tiny_pipe, redness, settings, OneProcess())
    rollout, cond = trainer.rollout(PROMPTS[:2], list(range(24)), settings.noise_level)
    advantages, _ = trainer.advantages(trainer.score(redness, rollout, PROMPTS[:2]).reshape(2, 12))
    trainer.train(rollout, advantages, cond, torch.Generator().manual_seed(0))
    rows = torch.arange(4)
    step, kl = trainer.step_terms(rollout, rows, 0, cond, with_kl=True)
    assert not torch.equal(step.log_prob, rollout.log_probs[rows, 0])
    assert (kl > 0).all()
    # The reference is the same network with the adapter off: its velocity is the base model's.
    with torch.no_grad(), trainer.model.disable_adapter():
        off = trainer.model(**_inputs(tiny_pipe, rollout, cond))[0]
    assert all(not p.requires_grad for n, p in trainer.model.named_parameters() if "lora_" not in n)
    fresh = _fresh_transformer_output(rollout, cond)
    torch.testing.assert_close(off, fresh)


def _inputs(pipe, rollout, cond):
    x = rollout.latents[:2, 0]
    return dict(hidden_states=x, timestep=torch.full((2,), 1.0), guidance=None, pooled_projections=cond.pooled[[0, 0]],
                encoder_hidden_states=cond.embeds[[0, 0]], txt_ids=cond.text_ids, img_ids=cond.image_ids,
                return_dict=False)


def _fresh_transformer_output(rollout, cond):
    from .conftest import make_tiny_pipe

    pipe = make_tiny_pipe()
    with torch.no_grad():
        return pipe.transformer(**_inputs(pipe, rollout, cond))[0]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_one_update_moves_log_probs_the_way_the_advantages_point(sign):
    """A small step raises sum(A * log p) over the trained rows: the objective's sign is right."""
    from .conftest import make_tiny_pipe

    settings = tiny_settings(optimizer_steps=1, lr=1e-4, beta=0.0, top_k=None)
    trainer = GRPOTrainer(make_tiny_pipe(), redness, settings, OneProcess())
    rollout, cond = trainer.rollout(PROMPTS[:2], list(range(200, 224)), settings.noise_level)
    advantages = sign * torch.tensor([1.0, -1.0, 0.5, -0.5] * 6).reshape(2, 12)
    trainer.train(rollout, advantages, cond, torch.Generator().manual_seed(0))
    rows = torch.arange(24)
    with torch.no_grad():
        new = torch.stack([trainer.step_terms(rollout, rows, j, cond, False)[0].log_prob
                           for j in range(settings.trained_steps)], dim=1)
    gain = (advantages.reshape(-1, 1) * (new - rollout.log_probs)).sum()
    assert gain > 0


class TwoProcesses(OneProcess):
    """As if a second process had logged one more value of every statistic, 10.0 each."""

    sent = None

    def reduce(self, tensor, reduction="sum"):
        if tensor.dim() == 2:   # the statistics' (sum, count) rows
            self.sent = tensor.clone()
            return tensor + torch.tensor([10.0, 1.0], dtype=tensor.dtype)
        return tensor


def test_the_logged_loss_terms_are_means_over_every_process(tiny_pipe):
    settings = tiny_settings(beta=0.1)
    acc = TwoProcesses()
    trainer = GRPOTrainer(tiny_pipe, redness, settings, acc)
    rollout, cond = trainer.rollout(PROMPTS[:2], list(range(24)), settings.noise_level)
    advantages, _ = trainer.advantages(trainer.score(redness, rollout, PROMPTS[:2]).reshape(2, 12))
    stats = trainer.train(rollout, advantages, cond, torch.Generator().manual_seed(0))
    for key, (total, count) in zip(("policy", "kl", "ratio", "clip_fraction"), acc.sent.tolist()):
        assert count > 0 and stats[key] == pytest.approx((total + 10.0) / (count + 1)), key
