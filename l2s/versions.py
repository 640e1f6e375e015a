"""The software a result was made with, for reports and model cards."""
from __future__ import annotations

import platform


def software_versions() -> dict[str, str | None]:
    """Versions of l2s, its compiled extension (None when not built), torch, diffusers,
    transformers and Python."""
    import diffusers
    import torch
    import transformers

    from l2s import __version__

    try:
        import l2s_fast
        fast = l2s_fast.__version__
    except ImportError:
        fast = None
    return {"l2s": __version__, "l2s_fast": fast, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}
