"""The blocks of diffusers' FLUX transformer, computed the same way, for steered passes only.

Each function does what ``FluxTransformerBlock`` / ``FluxSingleTransformerBlock`` and their stock
``FluxAttnProcessor`` do (same submodules, same operations in the same order, so eager results
are the stock ones, bit for bit on CPU), with these differences:

* the adaLN modulation of each block (a function of the timestep embedding only) comes in
  precomputed (``mods``): it is the same for every iteration of a denoising step;
* the maps of the layer are returned, and the last captured layer (``maps_only``) computes only
  its image queries and text keys: the maps need nothing else from it;
* compiled on the CPU, the tanh-approximate GELU is written as the sigmoid it equals (:func:`gelu`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.activations import GELU
from diffusers.models.attention import FeedForward
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from torch.nn.modules import module as nn_module

from l2s.ops import selected_text_attention

Rope = tuple[torch.Tensor, torch.Tensor]


def modulations(norm: torch.nn.Module, temb: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
    """What ``AdaLayerNormZero`` (6 parts) / ``AdaLayerNormZeroSingle`` (3) derive from ``temb``."""
    return norm.linear(norm.silu(temb)).chunk(parts, dim=1)


def _modulated(normed: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return normed * (1 + scale[:, None]) + shift[:, None]


def _heads(x: torch.Tensor, attn) -> torch.Tensor:
    return x.unflatten(-1, (-1, attn.head_dim))


def _rope(x: torch.Tensor, rope: Rope, rows: slice) -> torch.Tensor:
    return apply_rotary_emb(x, (rope[0][rows], rope[1][rows]), sequence_dim=1)


_SEPARATE = {False: ("to_q", "to_k", "to_v"), True: ("add_q_proj", "add_k_proj", "add_v_proj")}


def _projected(attn, x: torch.Tensor, parts: str = "qkv", added: bool = False) -> tuple[torch.Tensor, ...]:
    """The ``parts`` (of "qkv") of ``x`` (``added``: the text stream) as the stock processor projects
    them: from the fused copy whenever ``attn.fused_projections`` is set (diffusers' own test, even if
    the separate layers changed since), else from the separate layers."""
    if attn.fused_projections:
        fused = (attn.to_added_qkv if added else attn.to_qkv)(x).chunk(3, dim=-1)
        return tuple(fused["qkv".index(part)] for part in parts)
    return tuple(getattr(attn, _SEPARATE[added]["qkv".index(part)])(x) for part in parts)


def layer_maps(query: torch.Tensor, key: torch.Tensor, text_len: int, selector: torch.Tensor,
               backend: str) -> torch.Tensor:
    """``(B, H, N, W)`` maps (one column per selector column: the groups, then zero padding) from
    ``[B, S, H, D]`` joint queries and keys (text first), or from the image queries and text keys
    alone (``text_len=0``)."""
    image_query = query[:, text_len:] if text_len else query
    text_key = key[:, :text_len] if text_len else key
    return selected_text_attention(image_query.transpose(1, 2), text_key.transpose(1, 2), selector,
                                   backend=backend)


def gelu(x: torch.Tensor, approximate: str) -> torch.Tensor:
    """``F.gelu(x, approximate)``; compiled on the CPU, its tanh form as the equal ``x * sigmoid(2u)``.

    Inductor's CPU ``tanh`` (Sleef, 1 ulp) is slow; the sigmoid runs on its vectorised ``exp``
    (``bench/test_bench_gelu.py``). In float32 (bf16 steps would round each term); eager and
    ``torch.export`` keep the stock call (bit for bit; an export may target another device)."""
    compiled = torch.compiler.is_compiling() and not torch.compiler.is_exporting()
    if approximate == "tanh" and x.device.type == "cpu" and compiled:
        u2 = 1.5957691216057308 * (x.float() + 0.044715 * x.float() ** 3)     # 2u, u = sqrt(2/pi)(x + 0.044715x³)
        return (x.float() * torch.sigmoid(u2)).to(x.dtype)
    return F.gelu(x, approximate=approximate)


def _plain(module: torch.nn.Module, kind: type) -> bool:
    """Whether ``module(x)`` would run ``kind.forward`` alone, so a bypass may stand for it: a ``kind``
    exactly, its forward not replaced on the instance (diffusers' hooks do so), no hook of its own
    (forward or backward) and no global module hook."""
    own = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks)
    every = (nn_module._global_forward_hooks, nn_module._global_forward_pre_hooks, nn_module._global_backward_hooks,
             nn_module._global_backward_pre_hooks)
    return type(module) is kind and "forward" not in vars(module) and not any(own) and not any(every)


def _feed_forward(ff, x: torch.Tensor) -> torch.Tensor:
    """``ff(x)`` for diffusers' ``FeedForward``, its GELU through :func:`gelu` (one not :func:`_plain`: the
    stock call)."""
    if not _plain(ff, FeedForward):
        return ff(x)
    for module in ff.net:
        x = gelu(module.proj(x), module.approximate) if _plain(module, GELU) else module(x)
    return x


def _attend(attn, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    processor = attn.processor
    out = dispatch_attention_fn(query, key, value, attn_mask=None, backend=processor._attention_backend,
                                parallel_config=processor._parallel_config)
    return out.flatten(2, 3).to(query.dtype)


def double_block(block, hidden: torch.Tensor, text: torch.Tensor, mods: tuple[torch.Tensor, ...], rope: Rope,
                 capture: tuple, maps_only: bool):
    """``(text, hidden, maps)`` after one double-stream block; ``capture`` is ``(selector, backend)``
    or None (a layer the classifier does not read). ``maps_only``: ``(None, None, maps)``."""
    shift, scale, gate, shift_mlp, scale_mlp, gate_mlp = mods[:6]
    c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp = mods[6:]
    attn, text_len = block.attn, text.shape[1]
    norm_hidden = _modulated(block.norm1.norm(hidden), shift, scale)
    norm_text = _modulated(block.norm1_context.norm(text), c_shift, c_scale)
    if maps_only:
        (query,), (key,) = _projected(attn, norm_hidden, "q"), _projected(attn, norm_text, "k", added=True)
        query = _rope(attn.norm_q(_heads(query, attn)), rope, slice(text_len, None))
        key = _rope(attn.norm_added_k(_heads(key, attn)), rope, slice(0, text_len))
        return None, None, layer_maps(query, key, 0, *capture)
    query, key, value = (_heads(x, attn) for x in _projected(attn, norm_hidden))
    text_query, text_key, text_value = (_heads(x, attn) for x in _projected(attn, norm_text, added=True))
    query, key = attn.norm_q(query), attn.norm_k(key)
    text_query, text_key = attn.norm_added_q(text_query), attn.norm_added_k(text_key)
    query = apply_rotary_emb(torch.cat([text_query, query], dim=1), rope, sequence_dim=1)
    key = apply_rotary_emb(torch.cat([text_key, key], dim=1), rope, sequence_dim=1)
    value = torch.cat([text_value, value], dim=1)
    maps = layer_maps(query, key, text_len, *capture) if capture is not None else None
    text_out, out = _attend(attn, query, key, value).split_with_sizes(
        [text_len, hidden.shape[1]], dim=1)
    out = attn.to_out[1](attn.to_out[0](out.contiguous()))
    text_out = attn.to_add_out(text_out.contiguous())

    hidden = hidden + gate.unsqueeze(1) * out
    hidden = hidden + gate_mlp.unsqueeze(1) * _feed_forward(
        block.ff, _modulated(block.norm2(hidden), shift_mlp, scale_mlp))
    text = text + c_gate.unsqueeze(1) * text_out
    text = text + c_gate_mlp.unsqueeze(1) * _feed_forward(
        block.ff_context, _modulated(block.norm2_context(text), c_shift_mlp, c_scale_mlp))
    return _clipped(text), hidden, maps      # the stock block clips only the text stream


def _clipped(x: torch.Tensor) -> torch.Tensor:
    return x.clip(-65504, 65504) if x.dtype == torch.float16 else x


def single_block(block, joint: torch.Tensor, mods: tuple[torch.Tensor, ...], rope: Rope, text_len: int,
                 capture: tuple, maps_only: bool):
    """``(joint, maps)`` after one single-stream block on ``joint`` = cat(text, image) (the stock
    blocks split and re-join it between blocks: the same tensor); ``maps_only``: ``(None, maps)``."""
    shift, scale, gate = mods
    attn = block.attn
    norm_joint = _modulated(block.norm.norm(joint), shift, scale)
    if maps_only:
        (query,), (key,) = (_projected(attn, norm_joint[:, text_len:], "q"),
                            _projected(attn, norm_joint[:, :text_len], "k"))
        query = _rope(attn.norm_q(_heads(query, attn)), rope, slice(text_len, None))
        key = _rope(attn.norm_k(_heads(key, attn)), rope, slice(0, text_len))
        return None, layer_maps(query, key, 0, *capture)
    act = block.act_mlp
    mlp = (gelu(block.proj_mlp(norm_joint), act.approximate) if _plain(act, torch.nn.GELU)
           else act(block.proj_mlp(norm_joint)))
    query, key, value = (_heads(x, attn) for x in _projected(attn, norm_joint))
    query = apply_rotary_emb(attn.norm_q(query), rope, sequence_dim=1)
    key = apply_rotary_emb(attn.norm_k(key), rope, sequence_dim=1)
    maps = layer_maps(query, key, text_len, *capture) if capture is not None else None
    out = torch.cat([_attend(attn, query, key, value), mlp], dim=2)
    return _clipped(joint + gate.unsqueeze(1) * block.proj_out(out)), maps
