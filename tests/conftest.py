import pytest

from engine.model_loader import LoadedModel, load_model


@pytest.fixture(scope="session")
def loaded_model() -> LoadedModel:
    """The default model (SmolLM2-135M-Instruct), loaded once per pytest process."""
    return load_model()
