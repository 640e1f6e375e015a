"""l2s: Learn-to-Steer spatial relations in text-to-image diffusion, fast."""

__version__ = "0.1.0"
