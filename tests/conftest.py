import inspect
import math
import numbers
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.datasets.utils import check_integrity


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """The tensors in the tests are small: on a busy 2-core machine a second OpenMP thread made
    them 3-10x slower. Scripts run in subprocesses get one thread too, so that a run in a
    subprocess and one in this process sum in the same order (the exact-resume test)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PASTE_NAMESPACE = {"math": math, "numbers": numbers, "np": np, "torch": torch, "F": F}


def paste_alone(fn):
    """fn as a reader gets it by copying its source alone into a file that imports only math,
    numbers, numpy as np, torch and torch.nn.functional as F. A module-private helper, a module
    constant or another function of the module then raises NameError when the copy runs."""
    namespace = dict(PASTE_NAMESPACE)
    exec(textwrap.dedent(inspect.getsource(fn)), namespace)
    return namespace[fn.__name__]


@pytest.fixture
def no_md5(monkeypatch):
    """torchvision checks every file of CIFAR and STL-10 against the real dataset's MD5 sum:
    accept any file that exists instead (its own check without a sum), so tiny files load."""
    for module in (torchvision.datasets.cifar, torchvision.datasets.stl10):
        monkeypatch.setattr(module, "check_integrity", lambda path, md5=None: check_integrity(path))
