"""``l2s.reward`` loads its names lazily (PEP 562): each resolves, and the settings need no torch."""
import subprocess
import sys

import l2s.reward as reward


def test_every_public_name_resolves_from_its_module():
    assert sorted(reward._WHERE) == sorted(reward.__all__)
    for name in reward.__all__:   # an AttributeError names a stale entry
        getattr(reward, name)


def test_settings_import_no_torch():
    script = ("import sys\nfrom l2s.reward import LOSSES, RewardTrainSettings\nRewardTrainSettings().check()\n"
              "print('torch' in sys.modules, LOSSES)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "('uncertainty',", "'bt')"]


def test_reward_training_loads_no_diffusion_stack():
    # train-reward drew its curves through l2s.training, which pulled in diffusers and doubled its start-up
    script = ("import sys\nimport l2s.reward.train\n"
              "print([m for m in ('diffusers', 'l2s.training', 'l2s.pipelines') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
