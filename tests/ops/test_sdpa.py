"""selected_text_attention: the SDPA selector backend vs its explicit reference and vs the native op."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from l2s.ops import (
    selected_text_attention,
    selected_text_attention_reference,
    selector_width,
    token_group_selector,
)

from .helpers import random_inputs

MASKS = {
    "no mask": None,
    "bool key padding": torch.tensor([True, True, False, True, False, True]).view(1, 1, 1, 6),
    "float bias": torch.linspace(-2.0, 1.0, 6).view(1, 1, 1, 6),
    # A query row that sees no key: SDPA gives zero maps and zero gradients there.
    "bool, a row hidden": torch.ones(1, 1, 7, 6, dtype=torch.bool).index_fill(2, torch.tensor([2]), False),
    "float, a row hidden": torch.zeros(1, 1, 7, 6).index_fill(2, torch.tensor([2]), float("-inf")),
}


@pytest.mark.parametrize("mask", MASKS.values(), ids=MASKS.keys())
def test_sdpa_backend_forward_and_backward_match_reference(mask):
    q, k, _ = random_inputs(2, 3, 7, 6, 8, 1)
    selector = token_group_selector([[0, 1], [3], [5]], text_len=6, width=8)  # padded as on CPU
    grad_out = torch.randn(2, 3, 7, 8)
    if mask is not None and mask.is_floating_point():
        mask = mask.double()  # SDPA wants a float mask in the query's dtype
    results = []
    for fn in (selected_text_attention, selected_text_attention_reference):
        q64, k64 = q.double().requires_grad_(), k.double().requires_grad_()
        out = fn(q64, k64, selector, attn_mask=mask)
        out.backward(grad_out.double())
        results.append((out.detach(), q64.grad, k64.grad))
    for actual, wanted in zip(*results):
        torch.testing.assert_close(actual, wanted, atol=1e-12, rtol=1e-12)
    assert all(t.isfinite().all() for t in results[1])


def test_both_backends_refuse_the_same_inputs():
    q, k, _ = random_inputs(1, 2, 3, 5, 4, 1)
    selector = token_group_selector([[0], [2, 3]], text_len=5)
    bad = {"3-D query": (q[0], k[0], selector), "no text keys": (q, k[:, :, :0], selector[:0]),
           "float64 keys": (q, k.double(), selector), "integer selector": (q, k, selector.long())}
    for name, inputs in bad.items():
        said = []
        for backend in ("sdpa", "native"):
            with pytest.raises((ValueError, TypeError)) as error:
                selected_text_attention(*inputs, backend=backend)
            said.append(str(error.value))
        assert said[0] == said[1], name


def test_under_autocast_both_backends_give_autocast_maps():
    q, k, _ = random_inputs(1, 2, 3, 5, 4, 1)
    selector = token_group_selector([[0], [2, 3]], text_len=5)
    layer = torch.nn.Linear(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        query = layer(q)                         # bf16, the keys still float32
        maps = [selected_text_attention(query, k, selector, backend=b) for b in ("sdpa", "native")]
    assert [m.dtype for m in maps] == [torch.bfloat16] * 2
    torch.testing.assert_close(maps[0].float(), maps[1].float(), atol=2e-2, rtol=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):   # autocast leaves float64 alone, and so do both
        wide = [selected_text_attention(q.double(), k.double(), selector.double(), backend=b)
                for b in ("sdpa", "native")]
    assert [m.dtype for m in wide] == [torch.float64] * 2


def test_sdpa_backend_gradcheck_float64():
    q, k, _ = random_inputs(1, 2, 4, 5, 4, 1, dtype=torch.float64)
    selector = token_group_selector([[1, 2], [4]], text_len=5, dtype=torch.float64)
    q.requires_grad_()
    k.requires_grad_()
    assert torch.autograd.gradcheck(lambda q, k: selected_text_attention(q, k, selector), (q, k))


def test_token_group_selector_and_its_width():
    selector = token_group_selector([[1, 2], [4]], text_len=5, width=3)
    expected = torch.zeros(5, 3)
    expected[[1, 2], 0] = 0.5
    expected[4, 1] = 1.0
    assert torch.equal(selector, expected)
    with pytest.raises(ValueError, match="width 1 < number of groups 2"):
        token_group_selector([[1], [2]], text_len=5, width=1)
    assert selector_width(3, 64, torch.device("cpu")) == 64
    assert selector_width(3, 64, torch.device("cpu"), backend="native") == 3
    assert selector_width(9, 64, torch.device("cuda")) == 16
    assert selector_width(3, 64, "cpu") == 64 and selector_width(9, 64, "cuda") == 16   # names, as torch takes
    with pytest.raises(ValueError, match="unknown backend 'bogus'"):
        selector_width(3, 64, "cpu", backend="bogus")
    with pytest.raises(TypeError, match="give a floating dtype, got torch.int64"):
        token_group_selector([[0, 1]], text_len=4, dtype=torch.long)             # 1/2 would be 0
    with pytest.raises(ValueError, match=r"whole token indices, got \[True\]"):
        token_group_selector([[True]], text_len=4)
    with pytest.raises(ValueError, match=r"distinct token indices in \[0, 4\), got \[1, 1\]"):
        token_group_selector([torch.tensor([1, 1])], text_len=4)        # a tensor group: checked as a list
    with pytest.raises(ValueError, match="whole token indices"):
        token_group_selector([torch.tensor([1.0])], text_len=4)
    assert torch.equal(token_group_selector([torch.tensor([0, 1])], text_len=2), torch.tensor([[0.5], [0.5]]))
    assert torch.equal(token_group_selector([list(torch.tensor([0, 1]))], text_len=2), torch.tensor([[0.5], [0.5]]))
    with pytest.raises(ValueError, match="distinct"):
        token_group_selector([list(torch.tensor([1, 1]))], text_len=2)
    with pytest.raises(ValueError, match="a token group is a sequence of token indices, got 3"):
        token_group_selector([3], text_len=4)
    assert torch.equal(token_group_selector([torch.tensor(1)], text_len=2), torch.tensor([[0.0], [1.0]]))
    assert torch.equal(token_group_selector([[np.int64(1)]], text_len=2), torch.tensor([[0.0], [1.0]]))


def test_unknown_backend_is_rejected():
    q, k, selector = random_inputs(1, 1, 2, 3, 4, 1)
    with pytest.raises(ValueError, match="unknown backend"):
        selected_text_attention(q, k, selector, backend="cudnn")


def test_selected_text_attention_matches_the_sdpa_capture_path():
    q, k, _ = random_inputs(2, 2, 12, 9, 16, 1)
    selector = token_group_selector([[1, 2], [4], [6, 7, 8]], text_len=9, width=16)  # padded as on CPU
    grad_out = torch.randn(2, 2, 12, 16)
    maps = {}
    for name in ("native", "sdpa"):
        q_, k_ = q.clone().requires_grad_(), k.clone().requires_grad_()
        out = selected_text_attention(q_, k_, selector, backend=name)
        out.backward(grad_out)
        maps[name] = (out.detach(), q_.grad, k_.grad)
    assert maps["native"][0].shape == (2, 2, 12, 16)
    assert not maps["native"][0][..., 3:].any()  # padding columns stay zero
    for native, sdpa in zip(maps["native"], maps["sdpa"]):
        torch.testing.assert_close(native, sdpa, atol=1e-5, rtol=1e-5)


def test_selected_text_attention_with_a_mask_applies_it():
    """The native op takes no mask: with one, the native backend runs SDPA."""
    q, k, selector = random_inputs(1, 2, 5, 6, 8, 2)
    mask = torch.tensor([True, True, False, True, False, True]).view(1, 1, 1, 6)  # key padding
    out = selected_text_attention(q, k, selector, attn_mask=mask, backend="native")
    logits = (q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(out, logits.softmax(-1) @ selector, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_capture_matches_the_sdpa_selector_baseline_on_gpu(dtype):
    """FLUX-sized layer (24 heads, 1024 image × 512 text tokens, 3 groups padded to 8)."""
    q, k, _ = random_inputs(1, 24, 1024, 512, 128, 1, dtype=dtype, device="cuda")
    selector = token_group_selector([[3, 4], [9], [20, 21, 22]], 512, width=8, device="cuda", dtype=dtype)
    grad_out = torch.randn(1, 24, 1024, 8, device="cuda", dtype=dtype)
    results = []
    for backend in ("native", "sdpa"):
        q_, k_ = q.clone().requires_grad_(), k.clone().requires_grad_()
        out = selected_text_attention(q_, k_, selector, backend=backend)
        out.backward(grad_out)
        results.append((out.float(), q_.grad.float(), k_.grad.float()))
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for native, baseline in zip(*results):
        assert (native - baseline).norm() <= tol * baseline.norm()


@pytest.mark.parametrize("groups", [[[]], [[1, 1, 2]], [[1, -1]], [[0, 6]]])
def test_a_token_group_that_would_not_average_its_tokens_is_refused(groups):
    with pytest.raises(ValueError, match="must be distinct token indices in \\[0, 6\\)"):
        token_group_selector(groups, text_len=6)


def test_the_backward_op_refuses_a_grad_out_that_does_not_fit():
    q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4)
    selector = token_group_selector([[0], [2, 3]], text_len=5)
    for grad_out, message in ((torch.ones(1, 2, 3, 3), r"grad_out has shape \(1, 2, 3, 3\); the forward's output "
                                                       r"is \(1, 2, 3, 2\)"),
                              (torch.ones(1, 2, 3, 2, device="meta"), "grad_out must be a floating-point tensor on cpu"),
                              (torch.ones(1, 2, 3, 2, dtype=torch.long), "grad_out must be a floating-point")):
        with pytest.raises(ValueError, match=message):
            torch.ops.l2s.selected_text_softmax_backward(grad_out, q, k, selector, 0.5)
    with pytest.raises(TypeError, match=r"the selector must be a floating-point tensor \(got torch.int64\)"):
        torch.ops.l2s.selected_text_softmax(q, k, selector.long(), 0.5)


def test_a_zero_head_dim_takes_a_default_scale_and_averages_the_keys():
    from l2s.ops import selected_text_softmax

    selector = token_group_selector([[0], [1, 2]], text_len=3)
    out = selected_text_softmax(torch.randn(1, 1, 2, 0), torch.randn(1, 1, 3, 0), selector)
    torch.testing.assert_close(out, torch.full((1, 1, 2, 2), 1 / 3))
