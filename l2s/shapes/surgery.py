"""Model surgery for continued training: load a saved transformer into a deeper one, or into one
with another patch size, so that training starts from what the saved model already does."""
from __future__ import annotations

import torch
from diffusers import FluxTransformer2DModel


def grow_transformer(target: FluxTransformer2DModel, saved: FluxTransformer2DModel) -> None:
    """Load ``saved`` into the deeper ``target`` so that ``target`` computes exactly what ``saved`` does.

    The saved blocks become the first blocks of each stack; every further block keeps its fresh
    weights but has its residual gates zeroed (adaLN-Zero, as DiT initialises every block), so it
    adds nothing until training opens its gates. Width and every other setting must match.
    """
    stacks = ("transformer_blocks", "single_transformer_blocks")
    for stack in stacks:
        have, want = len(getattr(saved, stack)), len(getattr(target, stack))
        if have > want:
            raise ValueError(f"cannot grow {stack} from {have} to {want} blocks (only deeper)")
    missing, unexpected = target.load_state_dict(saved.state_dict(), strict=False)
    if unexpected:
        raise ValueError(f"saved weights do not fit this model: {sorted(unexpected)[:3]}")
    new_prefixes = tuple(f"{stack}.{i}." for stack in stacks
                         for i in range(len(getattr(saved, stack)), len(getattr(target, stack))))
    stray = [key for key in missing if not key.startswith(new_prefixes)]
    if stray:
        raise ValueError(f"saved weights lack {sorted(stray)[:3]}")
    for stack in stacks:
        for block in list(getattr(target, stack))[len(getattr(saved, stack)):]:
            norms = [block.norm] if stack == "single_transformer_blocks" else [block.norm1, block.norm1_context]
            for norm in norms:
                _close_residual_gates(norm.linear)


# What a token is made of: the only weights whose shapes depend on the patch (vae_factor).
PATCH_WEIGHTS = ("x_embedder.", "proj_out.")


def repatch_transformer(target: FluxTransformer2DModel, saved: FluxTransformer2DModel) -> None:
    """Load ``saved`` into ``target`` except the patch embedding and output projection.

    For a model whose tokens cover fewer pixels (a smaller ``vae_factor``): the blocks, timestep
    and text embeddings carry over; ``x_embedder`` and ``proj_out`` keep their fresh weights, the
    output projection zeroed (as DiT starts it) so the run starts from a constant velocity instead
    of noise through trained blocks. Width, depth and every other setting must match.
    """
    weights = {k: v for k, v in saved.state_dict().items() if not k.startswith(PATCH_WEIGHTS)}
    missing, unexpected = target.load_state_dict(weights, strict=False)
    stray = [key for key in missing if not key.startswith(PATCH_WEIGHTS)]
    if unexpected or stray:
        raise ValueError(f"saved weights do not fit this model apart from its patches: "
                         f"{sorted(unexpected + stray)[:3]}")
    with torch.no_grad():
        target.proj_out.weight.zero_()
        target.proj_out.bias.zero_()


@torch.no_grad()
def _close_residual_gates(modulation: torch.nn.Linear) -> None:
    """Zero the gate rows of an adaLN modulation: its output is (shift, scale, gate) per branch."""
    width = modulation.in_features  # the conditioning width = the model width
    for gate in range(2, modulation.out_features // width, 3):
        rows = slice(gate * width, (gate + 1) * width)
        modulation.weight[rows] = 0
        modulation.bias[rows] = 0
