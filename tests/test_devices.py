"""``l2s.devices.check_device``: a device named by the user, checked before any work."""
import pytest
import torch

from l2s.devices import check_device
from l2s.errors import L2SError


def test_this_machines_cpu_passes_and_a_kind_torch_cannot_use_is_refused_by_name():
    check_device("cpu")
    check_device(torch.device("cpu"))
    with pytest.raises(L2SError, match=r"device 'bogus' is not a torch device"):
        check_device("bogus")
    with pytest.raises(L2SError, match=r"device 'meta' is not supported"):
        check_device("meta")
    with pytest.raises(L2SError, match=r"--device 'cpu:x'"):
        check_device("cpu:x", lambda name: "--" + name)


@pytest.mark.parametrize("kind", ["cuda", "xpu", "mps"])
def test_an_accelerator_this_machine_lacks_is_refused_and_one_it_has_passes(kind):
    here = {"cuda": torch.cuda.is_available, "xpu": torch.xpu.is_available, "mps": torch.mps.is_available}[kind]()
    if here:
        check_device(kind)
    else:
        with pytest.raises(L2SError, match=f"{kind.upper()} is not available on this machine"):
            check_device(kind)
