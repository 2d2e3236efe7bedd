import pytest
import torch


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
