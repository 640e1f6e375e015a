"""Which family a pipeline is, its captured module and its pixels per map cell."""
import pytest

from l2s.demo import tiny_flux_pipeline, tiny_sd_pipeline
from l2s.errors import L2SError
from l2s.pipelines.families import denoiser, is_flux, pipeline_family, pixels_per_token


def test_flux_is_named_by_its_guidance_embedding_and_packs_two_latents_a_token():
    pipe = tiny_flux_pipeline()
    assert pipeline_family(pipe) == ("flux-dev" if pipe.transformer.config.guidance_embeds else "flux-schnell")
    assert is_flux(pipe) and denoiser(pipe) is pipe.transformer
    assert pixels_per_token(pipe) == 2 * pipe.vae_scale_factor


def test_stable_diffusion_reads_its_unet_one_latent_a_cell():
    pipe = tiny_sd_pipeline()
    assert pipeline_family(pipe) in ("sd14", "sd21") and not is_flux(pipe)
    assert denoiser(pipe) is pipe.unet
    assert pixels_per_token(pipe) == pipe.vae_scale_factor


def test_another_pipeline_is_refused_by_its_class_name():
    class Kandinsky:
        pass

    with pytest.raises(L2SError, match="cannot steer or invert with a Kandinsky"):
        pipeline_family(Kandinsky())


def test_a_cache_entry_is_named_by_one_hub_id_wherever_it_is_met(tmp_path):
    # canonical_model_name (a snapshot) and the loaders' note (the entry itself) read the entry's name alike.
    from l2s.classifier.hub import cache_entry_note
    from l2s.pipelines.families import canonical_model_name

    snapshot = tmp_path / "models--owner--a-model" / "snapshots" / "rev"
    snapshot.mkdir(parents=True)
    assert canonical_model_name(str(snapshot)) == "owner/a-model"
    assert "give its hub id owner/a-model " in cache_entry_note(snapshot.parent.parent)
    assert canonical_model_name(str(tmp_path)) == str(tmp_path.resolve()) and cache_entry_note(tmp_path) == ""
