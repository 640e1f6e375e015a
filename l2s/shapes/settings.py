"""How a shapes model is sampled and steered: the settings :mod:`.model` gives ``wrap_pipeline``."""

# Not step-distilled (4 Euler steps leave blurry blobs): 12 steps, the first half steered.
SHAPES_STEPS = 12
# Guidance 2 against the empty caption on the plain steps, base and steered alike
# (FluxSteeringPipeline's true_cfg_scale; 1 = none): objects come out in their colour and shape
# more often, for one more transformer pass per plain step.
SHAPES_TRUE_CFG = 2.0
SHAPES_FAMILY = "flux-dev"     # whose published schedule rule applies (steer steps 0-5 of 12)
SHAPES_STEP_SIZE = 1.0         # steering step size of every named schedule (FLUX's presets use 5)
SHAPES_MODEL_NAME = "shapes-world"   # the model a 'shapes make-data' dataset records (whichever shapes model)
SHAPES_SHARD_SIZE = 256      # samples per committed chunk of `shapes make-data` (its maps' settings include it)
NEUTRAL_FRACTION = 0.25   # scenes that also give a neutral "is" sample ("A red circle"): more samples than scenes
