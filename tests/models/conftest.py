import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: thread start-up costs more than it saves, badly so on a busy machine. A
    test module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
