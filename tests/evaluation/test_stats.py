"""Paired comparisons of two settings on the same images."""
import pytest

from l2s.evaluation import PairedComparison, paired_comparison


def test_paired_comparison_counts_only_shared_images_and_discordant_pairs():
    a = {"0/1": True, "0/2": True, "1/1": False, "1/2": True, "9/9": True}
    b = {"0/1": True, "0/2": False, "1/1": True, "1/2": False}
    c = paired_comparison(a, b)
    assert (c.n_pairs, c.a_correct, c.b_correct, c.a_only, c.b_only) == (4, 3, 2, 2, 1)
    # 3 discordant pairs split 2:1 -> P(split at least this uneven) = 2 * (1 + 3) / 8 = 1.
    assert c.p_value == pytest.approx(1.0)


def test_paired_sign_test_matches_the_binomial_tail():
    binomtest = pytest.importorskip("scipy.stats", reason="scipy gives the independent binomial tail").binomtest

    for a_only, b_only in ((10, 2), (30, 14), (5, 5), (0, 7), (40, 22)):
        c = PairedComparison(n_pairs=100, a_correct=0, b_correct=0, a_only=a_only, b_only=b_only)
        expected = binomtest(a_only, a_only + b_only, 0.5).pvalue
        assert c.p_value == pytest.approx(expected, rel=1e-9)
    assert PairedComparison(10, 5, 5, 0, 0).p_value == 1.0
