"""GPU kernels of l2s written in Triton, installed as ``l2s.kernels``.

Triton is optional (absent on CPU-only machines): import these modules only where triton is
installed. ``l2s.ops`` picks them for CUDA tensors when triton is importable, else l2s_fast's CUDA
kernels, else raises — it never swaps in a path with different results silently.
``TRITON_INTERPRET=1`` (set before import) runs the kernels on CPU tensors in Triton's interpreter.
"""
