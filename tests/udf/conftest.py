"""One real embedded engine on a tiny checkpoint, shared by the udf tests."""
import pytest

from engine_backend.backends import make_backend
from engine_backend.testing import make_tiny_model


@pytest.fixture(scope="session")
def backend(tmp_path_factory):
    path = make_tiny_model(tmp_path_factory.mktemp("tiny_udf"), arch="llama")
    be = make_backend("embedded", model=str(path))
    yield be
    be.close()
