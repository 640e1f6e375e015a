"""Training the shapes model: sampler conventions, resumption, continued runs (grow, repatch), the CLI."""
from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline

from l2s.cli.shapes_model import build_train_model_parser as build_arg_parser
from l2s.cli.shapes_model import train_model_main
from l2s.cli.shapes_model import train_settings_from_args as settings_from_args
from l2s.errors import L2SError, ModelLoadError, UsageError
from l2s.shapes import (
    TINY_CONFIG,
    ShapesTrainer,
    TrainSettings,
    build_shapes_pipeline,
    grow_transformer,
    images_to_latents,
    learning_rate,
    load_shapes_pipeline,
    random_scene,
    render_array,
    render_dataset,
    repatch_transformer,
    train,
)


def tiny_settings(**overrides) -> TrainSettings:
    base = TrainSettings(steps=4, batch_size=8, lr=2e-3, warmup=2, scenes=48, size=16, checkpoint_every=2,
                         object_sizes=(4, 6), n_objects=(2, 3), model=asdict(replace(TINY_CONFIG, image_size=16)))
    return replace(base, **overrides)


@pytest.fixture(scope="module")
def tiny_pipe() -> FluxPipeline:
    return build_shapes_pipeline(TINY_CONFIG, seed=0)


def _oracle(pipe: FluxPipeline, target_latents: torch.Tensor):
    """A stand-in transformer forward that knows x0: velocity (x_t - x0) / sigma = noise - x0."""
    def forward(hidden_states, timestep, **kwargs):
        sigma = timestep.view(-1, 1, 1)
        return ((hidden_states - target_latents) / sigma,)
    return forward


def test_sampler_and_training_share_conventions(tiny_pipe, monkeypatch):
    """With the exact velocity, FluxPipeline's sampler lands on the training image, and the training
    loss of that same velocity is zero: sigma/timestep, target sign, packing and VAE scaling agree."""
    scene = random_scene(np.random.default_rng(1), size=32, n_objects=2)
    image = torch.from_numpy(render_array(scene).copy())[None]
    x0 = images_to_latents(tiny_pipe, image)
    monkeypatch.setattr(tiny_pipe.transformer, "forward", _oracle(tiny_pipe, x0))
    out = tiny_pipe("a red circle", height=32, width=32, num_inference_steps=4, guidance_scale=0.0,
                    output_type="np", generator=torch.Generator().manual_seed(0)).images[0]
    np.testing.assert_allclose(out * 255, image[0].numpy(), atol=0.5)

    settings = tiny_settings(size=32, model=asdict(TINY_CONFIG))
    trainer = ShapesTrainer(settings, render_dataset(4, 0, 32, 0.0, (2, 2), (8, 12), TINY_CONFIG.text_window))
    monkeypatch.setattr(trainer.pipe.transformer, "forward", _oracle(trainer.pipe, x0))
    sigmas, noise = torch.tensor([0.3]), torch.randn_like(x0)
    loss = trainer.loss(image, trainer.dataset.token_ids[:1], sigmas, noise)
    assert float(loss) < 1e-10


def test_learning_rate_warms_up_then_decays():
    settings = TrainSettings(steps=100, lr=1.0, warmup=10, final_lr_fraction=0.1)
    assert learning_rate(settings, 0) == pytest.approx(0.1)
    assert learning_rate(settings, 9) == pytest.approx(1.0)
    assert learning_rate(settings, 99) == pytest.approx(0.1, abs=1e-3)
    assert learning_rate(settings, 50) < learning_rate(settings, 20)



def test_the_ema_averages_from_the_first_step_with_the_warm_up_decay():
    """Pinned because diffusers' EMAModel differs: its first update copies the weights (decay 0, ours 0.1);
    later ones agree, min(ema_decay, (1 + step) / (10 + step))."""
    settings = tiny_settings(scenes=4)
    dataset = render_dataset(settings.scenes, 0, settings.size, 0.15, settings.n_objects,
                             settings.object_sizes, TINY_CONFIG.text_window)
    trainer = ShapesTrainer(settings, dataset)
    start = {key: value.clone() for key, value in trainer.pipe.transformer.state_dict().items()}
    trainer.train_step()
    trained = trainer.pipe.transformer.state_dict()
    assert any(not torch.equal(trained[key], start[key]) for key in start)
    for key, value in trained.items():
        assert torch.equal(trainer.ema["transformer"][key], start[key].lerp(value, 0.9)), key

def test_a_few_training_steps_reduce_the_loss():
    settings = tiny_settings(steps=60, batch_size=16, lr=3e-3, warmup=5)
    dataset = render_dataset(settings.scenes, 0, settings.size, 0.15, settings.n_objects,
                             settings.object_sizes, TINY_CONFIG.text_window)
    trainer = ShapesTrainer(settings, dataset)
    fixed = torch.Generator().manual_seed(5)
    batch = torch.arange(16)
    x0 = images_to_latents(trainer.pipe, dataset.images[batch])
    sigmas = torch.rand(16, generator=fixed) * 0.8 + 0.1
    noise = torch.randn(x0.shape, generator=fixed)

    def held_out_loss() -> float:
        with torch.no_grad():
            return float(trainer.loss(dataset.images[batch], dataset.token_ids[batch], sigmas, noise))

    before = held_out_loss()
    for _ in range(settings.steps):
        trainer.train_step()
    assert held_out_loss() < 0.75 * before


def test_resume_equals_an_uninterrupted_run(tmp_path):
    settings = tiny_settings()
    straight = train(settings, tmp_path / "straight", progress=False)
    interrupted = train(settings, tmp_path / "resumed", progress=False, stop_at_step=2)
    assert interrupted.step == 2 and not (tmp_path / "resumed" / "pipeline").exists()
    resumed = train(settings, tmp_path / "resumed", progress=False)
    assert resumed.step == straight.step == 4
    for name, module in straight.trained.items():
        for key, value in module.state_dict().items():
            assert torch.equal(value, resumed.trained[name].state_dict()[key]), key
            assert torch.equal(straight.ema[name][key], resumed.ema[name][key]), key
    assert resumed.last_loss == straight.last_loss
    assert resumed.smoothed_loss == straight.smoothed_loss  # the running mean survives the resume
    exported = json.loads((tmp_path / "resumed" / "pipeline" / "training.json").read_text())
    assert exported["final_loss_smoothed"] == straight.smoothed_loss
    # Running the finished command again only re-exports, with the same record of the losses.
    again = train(settings, tmp_path / "resumed", progress=False)
    assert again.step == 4 and json.loads((tmp_path / "resumed" / "pipeline" / "training.json").read_text())[
        "final_loss_smoothed"] == straight.smoothed_loss
    # A resumed run with different settings must not silently mix them.
    with pytest.raises(Exception, match=r"other settings \(lr\); use another --out or --restart"):
        train(replace(settings, lr=1e-4, steps=6), tmp_path / "resumed", progress=False)
    # A checkpoint written before --grow and --repatch existed (neither in its settings) still resumes.
    checkpoint = tmp_path / "resumed" / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    older = json.loads(state["settings"])
    del older["grow"], older["repatch"]
    state["settings"] = json.dumps(older)
    torch.save(state, checkpoint)
    assert train(replace(settings, steps=5), tmp_path / "resumed", progress=False).step == 5
    with pytest.raises(Exception, match="other settings"):  # but not as a grown run
        train(replace(settings, steps=6, grow=True), tmp_path / "resumed", progress=False)


def test_a_start_over_killed_before_its_first_checkpoint_does_not_resume_the_old_run(tmp_path, monkeypatch, caplog):
    import l2s.shapes.trainer as trainer_module

    settings = tiny_settings()
    train(settings, tmp_path, progress=False, stop_at_step=2)

    class Killed(Exception):
        pass

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(trainer_module, "load_or_render_dataset", killed)   # killed while rendering
    with pytest.raises(Killed):
        train(replace(settings, lr=1e-4), tmp_path, progress=False, resume=False)
    assert "starting the training over: removed checkpoint.pt" in caplog.text
    monkeypatch.undo()
    assert train(replace(settings, lr=1e-4), tmp_path, progress=False, stop_at_step=1).step == 1   # a new run


def test_train_command_exports_a_loadable_pipeline(tmp_path, capsys, umask_022):
    out = tmp_path / "run"
    code = train_model_main(["--out", str(out), "--steps", "2", "--batch-size", "4", "--scenes", "16",
                             "--size", "16", "--objects", "2-2", "--object-sizes", "4-6", "--preset", "tiny",
                             "--no-progress"])
    assert code == 0
    record = json.loads((out / "pipeline" / "training.json").read_text())
    assert record["steps"] == 2 and record["seed"] == 0 and np.isfinite(record["final_loss"])
    assert "--steps 2" in record["command"] and "trained from scratch" in (out / "pipeline" / "TRAINING.md").read_text()
    assert set(umask_022(out / "pipeline").values()) == {0o644}   # diffusers' weights too (0600 by themselves)
    pipe = load_shapes_pipeline(out / "pipeline")
    image = pipe("a red circle", height=16, width=16, num_inference_steps=1, guidance_scale=0.0).images[0]
    assert image.size == (16, 16)


def test_init_from_continues_from_a_saved_pipeline(tmp_path):
    from l2s.errors import ModelLoadError

    first = train(tiny_settings(), tmp_path / "first", progress=False)
    saved = load_shapes_pipeline(tmp_path / "first" / "pipeline")
    # Another seed: the frozen CLIP encoder (the constant pooled vector) must come from the folder too.
    settings = replace(tiny_settings(), steps=0, seed=5, init_from=str(tmp_path / "first" / "pipeline"))
    continued = train(settings, tmp_path / "second", progress=False)
    for key, value in saved.transformer.state_dict().items():  # the EMA weights the first run exported
        assert torch.equal(value, continued.trained["transformer"].state_dict()[key]), key
        assert torch.equal(value, continued.ema["transformer"][key]), key
    for name in ("text_encoder", "text_encoder_2"):
        for key, value in getattr(saved, name).state_dict().items():
            assert torch.equal(value, getattr(continued.pipe, name).state_dict()[key]), (name, key)
    with torch.no_grad():
        assert torch.equal(continued.pooled, saved._get_clip_prompt_embeds([""], device="cpu"))
    exported = load_shapes_pipeline(tmp_path / "second" / "pipeline")  # and the export keeps them
    for name in ("text_encoder", "text_encoder_2", "transformer"):
        for key, value in getattr(saved, name).state_dict().items():
            assert torch.equal(value, getattr(exported, name).state_dict()[key]), (name, key)
    assert not torch.equal(first.trained["transformer"].state_dict()["proj_out.weight"],
                           build_shapes_pipeline(TINY_CONFIG).transformer.state_dict()["proj_out.weight"])
    wider = replace(settings, model={**settings.model, "head_dim": 32, "rope_axes": (8, 12, 12)})
    with pytest.raises(ModelLoadError, match="init-from"):
        train(wider, tmp_path / "third", progress=False)


def _velocity(transformer, seed: int = 0) -> torch.Tensor:
    """One transformer forward on fixed random inputs of the tiny config."""
    g = torch.Generator().manual_seed(seed)
    tokens, width = 16, TINY_CONFIG.text_dim
    with torch.no_grad():
        return transformer(
            hidden_states=torch.randn(2, tokens, transformer.config.in_channels, generator=g),
            timestep=torch.tensor([0.3, 0.8]), pooled_projections=torch.randn(2, TINY_CONFIG.clip_dim, generator=g),
            encoder_hidden_states=torch.randn(2, 8, width, generator=g), txt_ids=torch.zeros(8, 3),
            img_ids=FluxPipeline._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32), return_dict=False)[0]


def test_grown_transformer_computes_what_the_saved_one_does(tiny_pipe):
    deeper = replace(TINY_CONFIG, double_layers=3, single_layers=2)
    grown = build_shapes_pipeline(deeper, seed=7).transformer
    assert not torch.allclose(_velocity(grown), _velocity(tiny_pipe.transformer))  # fresh: different
    grow_transformer(grown, tiny_pipe.transformer)
    torch.testing.assert_close(_velocity(grown), _velocity(tiny_pipe.transformer), rtol=0, atol=1e-6)
    saved = tiny_pipe.transformer.state_dict()
    for key, value in grown.state_dict().items():
        if key in saved:
            assert torch.equal(value, saved[key]), key
    # Only the gates are closed: the new blocks' attention and shift/scale keep their fresh weights.
    width = TINY_CONFIG.width
    norm = grown.transformer_blocks[2].norm1.linear
    assert norm.weight[2 * width:3 * width].abs().sum() == 0 and norm.weight[:2 * width].abs().sum() > 0
    assert grown.single_transformer_blocks[1].attn.to_q.weight.abs().sum() > 0
    with pytest.raises(ValueError, match="only deeper"):
        grow_transformer(tiny_pipe.transformer, grown)


def test_training_a_grown_model_starts_from_the_saved_one_and_opens_the_new_blocks(tmp_path):
    first = train(tiny_settings(steps=2), tmp_path / "first", progress=False)
    saved = load_shapes_pipeline(tmp_path / "first" / "pipeline")
    deeper = {**first.settings.model, "double_layers": 2, "single_layers": 3}
    settings = tiny_settings(steps=0, seed=3, init_from=str(tmp_path / "first" / "pipeline"), model=deeper)
    with pytest.raises(ModelLoadError, match="--grow starts a deeper model"):
        train(settings, tmp_path / "refused", progress=False)
    grown = train(replace(settings, grow=True), tmp_path / "grown", progress=False)
    torch.testing.assert_close(_velocity(grown.pipe.transformer), _velocity(saved.transformer), rtol=0, atol=1e-6)
    exported = load_shapes_pipeline(tmp_path / "grown" / "pipeline")
    assert (exported.transformer.config.num_layers, exported.transformer.config.num_single_layers) == (2, 3)
    card = (tmp_path / "grown" / "pipeline" / "TRAINING.md").read_text()
    assert "grown to 2 double + 3 single blocks" in card
    assert "continued from an earlier model (below)" in card and "from scratch" not in card
    trained = train(replace(settings, grow=True, steps=2), tmp_path / "grown", progress=False)  # resumes at 0
    gate = trained.pipe.transformer.single_transformer_blocks[2].norm.linear.bias[2 * TINY_CONFIG.width:]
    assert gate.abs().sum() > 0  # training opened the new block's gate


def test_repatched_transformer_keeps_everything_but_the_patches(tiny_pipe):
    finer = build_shapes_pipeline(replace(TINY_CONFIG, vae_factor=1), seed=7).transformer
    assert finer.config.in_channels == 12 and tiny_pipe.transformer.config.in_channels == 48
    repatch_transformer(finer, tiny_pipe.transformer)
    saved = tiny_pipe.transformer.state_dict()
    kept = [key for key in finer.state_dict() if not key.startswith(("x_embedder.", "proj_out."))]
    assert kept and all(torch.equal(finer.state_dict()[key], saved[key]) for key in kept)
    assert finer.x_embedder.weight.abs().sum() > 0  # fresh, not zero
    assert finer.proj_out.weight.abs().sum() == 0 and finer.proj_out.bias.abs().sum() == 0
    deeper = build_shapes_pipeline(replace(TINY_CONFIG, vae_factor=1, single_layers=2), seed=7).transformer
    with pytest.raises(ValueError, match="apart from its patches"):
        repatch_transformer(deeper, tiny_pipe.transformer)


def test_training_a_repatched_model_with_finer_tokens(tmp_path):
    train(tiny_settings(steps=2), tmp_path / "first", progress=False)
    saved = load_shapes_pipeline(tmp_path / "first" / "pipeline")
    fine_args = ["--init-from", str(tmp_path / "first" / "pipeline"), "--repatch", "--vae-factor", "1",
                 "--batch-size", "4", "--scenes", "16", "--size", "16", "--objects", "2-2", "--object-sizes", "4-6",
                 "--preset", "tiny", "--no-progress"]
    assert train_model_main(["--out", str(tmp_path / "fine"), "--steps", "0", *fine_args]) == 0
    fine = load_shapes_pipeline(tmp_path / "fine" / "pipeline")
    assert fine.vae.config.downscale_factor == 1 and fine.transformer.config.in_channels == 12
    assert "re-patched to tokens of 2x2 pixels" in (tmp_path / "fine" / "pipeline" / "TRAINING.md").read_text()
    for name in ("text_encoder", "text_encoder_2"):  # the text side starts where the saved run ended
        for key, value in getattr(saved, name).state_dict().items():
            assert torch.equal(value, getattr(fine, name).state_dict()[key]), (name, key)
    blocks = saved.transformer.transformer_blocks[0].attn.to_q.weight
    assert torch.equal(blocks, fine.transformer.transformer_blocks[0].attn.to_q.weight)
    assert train_model_main(["--out", str(tmp_path / "fine"), "--steps", "2", *fine_args]) == 0  # trains on
    fine = load_shapes_pipeline(tmp_path / "fine" / "pipeline")
    assert fine.transformer.proj_out.weight.abs().sum() > 0
    image = fine("a red circle", height=16, width=16, num_inference_steps=1, guidance_scale=0.0).images[0]
    assert image.size == (16, 16)
    # Without --repatch the other patch size is refused with the hint.
    with pytest.raises(ModelLoadError, match="--repatch one with other patches"):
        train_model_main(["--out", str(tmp_path / "refused"), "--init-from", str(tmp_path / "first" / "pipeline"),
                          "--vae-factor", "1", "--steps", "1", "--size", "16", "--preset", "tiny", "--no-progress",
                          "--scenes", "16", "--objects", "2-2", "--object-sizes", "4-6"])
    for flags, message in ((["--repatch"], "--repatch needs --init-from"),
                           (["--repatch", "--grow", "--init-from", "x"], "cannot be combined")):
        with pytest.raises(Exception, match=message):
            train_model_main(["--out", str(tmp_path / "bad"), *flags, "--preset", "tiny", "--no-progress"])


def test_grow_needs_init_from(tmp_path):
    with pytest.raises(Exception, match="--grow needs --init-from"):
        train_model_main(["--out", str(tmp_path), "--grow", "--preset", "tiny", "--no-progress"])


def test_model_size_options_build_a_consistent_transformer():
    args = build_arg_parser().parse_args(["--out", "x", "--heads", "3", "--head-dim", "48", "--single-layers", "1"])
    model = settings_from_args(args).model
    assert (model["num_heads"], model["head_dim"], model["single_layers"]) == (3, 48, 1)
    assert sum(model["rope_axes"]) == 48
    pipe = build_shapes_pipeline(replace(TINY_CONFIG, head_dim=48, rope_axes=tuple(model["rope_axes"])))
    assert pipe.transformer.config.attention_head_dim == 48


def test_a_damaged_checkpoint_is_one_line_saying_how_to_recover(tmp_path, capsys):
    from l2s.cli import main

    out = tmp_path / "run"
    argv = ["shapes", "train-model", "--out", str(out), "--steps", "2", "--batch-size", "4", "--scenes", "16",
            "--size", "16", "--objects", "2-2", "--object-sizes", "4-6", "--preset", "tiny", "--no-progress"]
    out.mkdir()
    (out / ".l2s.kind").write_text("train-model\n")
    (out / "checkpoint.pt").write_bytes(b"PK\x03\x04 torn")
    assert main(argv) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("l2s:")]
    assert line.startswith(f"l2s: error: {out / 'checkpoint.pt'} is damaged (")
    assert line.endswith("rerun with --restart to train from the start, "
                         f"or delete {out / 'checkpoint.pt'}")
    assert main(argv + ["--restart"]) == 0                  # --restart starts over, as --no-resume
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2
    del state["optimizer"]                                  # a checkpoint of ours, missing a part
    torch.save(state, out / "checkpoint.pt")
    assert main(argv[:5] + ["3"] + argv[6:]) == 2           # a longer run resumes from it: refused
    assert "checkpoint.pt is damaged (KeyError)" in capsys.readouterr().err


def test_the_command_says_whether_it_trained_resumed_or_found_a_finished_run(tmp_path, capsys):
    from l2s.cli import main

    out = tmp_path / "run"
    argv = ["shapes", "train-model", "--out", str(out), "--steps", "1", "--batch-size", "4", "--scenes", "16",
            "--size", "16", "--objects", "2-2", "--object-sizes", "4-6", "--preset", "tiny", "--no-progress"]
    assert main(argv) == 0
    said = capsys.readouterr()   # an l2s line: on stderr, as every command's
    assert said.out == "" and said.err.startswith("l2s: trained 1 step, loss ")
    assert main(argv) == 0
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"l2s: {out} holds a finished run of 1 step (loss ") and line.endswith(
        f"nothing to train; its pipeline is exported again to {out / 'pipeline'}; more --steps continue it, "
        "--restart trains again")
    assert main(argv[:5] + ["2"] + argv[6:]) == 0
    assert ", resumed after step 1, loss " in capsys.readouterr().err
    exported = ["--out", str(tmp_path / "export"), "--steps", "0", "--init-from", str(out / "pipeline")]
    assert main(argv[:2] + exported + argv[6:]) == 0           # a new run exporting --init-from
    assert capsys.readouterr().err.startswith("l2s: trained 0 steps, loss ")


@pytest.fixture
def ctrl_c_catchable():
    """Ctrl-C as a terminal delivers it: a shell's background job (``cmd &``) inherits SIGINT
    ignored, which the trainer rightly leaves alone, and these tests would see no interrupt."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_an_ignored_sigint_stays_ignored(tmp_path, monkeypatch):
    import os
    import signal

    step = ShapesTrainer.train_step
    def interrupted(trainer):
        os.kill(os.getpid(), signal.SIGINT)
        return step(trainer)

    monkeypatch.setattr(ShapesTrainer, "train_step", interrupted)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert train(tiny_settings(), tmp_path / "run", progress=False).step == tiny_settings().steps
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_says_it_finishes_the_step_without_a_blank_line_in_a_log(tmp_path, monkeypatch, capfd,
                                                                        ctrl_c_catchable):
    import os
    import signal

    step = ShapesTrainer.train_step

    def interrupted_in_step_1(trainer):
        os.kill(os.getpid(), signal.SIGINT)
        return step(trainer)

    monkeypatch.setattr(ShapesTrainer, "train_step", interrupted_in_step_1)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_settings(), tmp_path / "run", progress=False)
    assert capfd.readouterr().err.startswith("l2s: finishing this training step to save it (Ctrl-C again")


def test_ctrl_c_saves_every_finished_step(tmp_path, monkeypatch, ctrl_c_catchable):
    import os
    import signal

    settings = replace(tiny_settings(), checkpoint_every=1000)     # no scheduled checkpoint before the end
    straight = train(settings, tmp_path / "straight", progress=False)
    step = ShapesTrainer.train_step

    def interrupted_in_step_3(trainer):
        if trainer.step == 2:
            os.kill(os.getpid(), signal.SIGINT)     # lands inside the step: it finishes first
        return step(trainer)

    monkeypatch.setattr(ShapesTrainer, "train_step", interrupted_in_step_3)
    with pytest.raises(KeyboardInterrupt) as stopped:
        train(settings, tmp_path / "resumed", progress=False)
    assert stopped.value.l2s_message.startswith("l2s: interrupted after step 3 (saved)")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler     # the handler is put back
    # A second Ctrl-C in the same step stops at once: nothing of that step is saved.
    def interrupted_twice(trainer):
        if trainer.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return step(trainer)

    # SIGTERM (a scheduler's stop) saves the same way, and says which signal it was.
    def terminated_in_step_4(trainer):
        if trainer.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(trainer)

    monkeypatch.setattr(ShapesTrainer, "train_step", terminated_in_step_4)
    with pytest.raises(KeyboardInterrupt) as stopped:
        train(settings, tmp_path / "terminated", progress=False)
    assert stopped.value.l2s_message.startswith("l2s: interrupted after step 4 (saved)")
    assert stopped.value.signum == signal.SIGTERM and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    monkeypatch.setattr(ShapesTrainer, "train_step", interrupted_twice)
    with pytest.raises(KeyboardInterrupt) as stopped:
        train(settings, tmp_path / "resumed", progress=False)
    assert not hasattr(stopped.value, "l2s_message")
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["step"] == 3
    monkeypatch.setattr(ShapesTrainer, "train_step", step)
    resumed = train(settings, tmp_path / "resumed", progress=False)
    assert resumed.steps_resumed == 3 and resumed.step == 4
    for name, module in straight.trained.items():
        for key, value in module.state_dict().items():
            assert torch.equal(value, resumed.trained[name].state_dict()[key]), key


def test_train_model_refuses_before_any_work(tmp_path, capsys):
    """Conflicting resume options, a missing --init-from pipeline and a size the VAE factor does not
    divide end with one line, before a scene is rendered or a folder made."""
    base = ["--out", str(tmp_path / "run"), "--preset", "tiny", "--no-progress", "--steps", "2", "--scenes", "10"]
    for flags in (["--resume", "--restart"], ["--restart", "--resume"]):
        with pytest.raises(UsageError, match="--resume and --restart contradict each other"):
            train_model_main(base + flags)
    with pytest.raises(UsageError, match=r"--init-from: no shapes-world pipeline at .*nope"):
        train_model_main(base + ["--init-from", str(tmp_path / "nope")])
    with pytest.raises(L2SError, match=r"--size \(32\) must be a multiple of 2 x the VAE factor \(3\): 6"):
        train_model_main(base + ["--vae-factor", "3"])
    assert not (tmp_path / "run").exists()
