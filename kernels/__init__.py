"""GPU kernels of l2s written in Triton, installed as ``l2s.kernels``.

Triton is optional (absent on CPU-only machines): modules here import it lazily, and callers
fall back to the PyTorch or ``l2s_fast`` CPU paths when it is missing.
"""
