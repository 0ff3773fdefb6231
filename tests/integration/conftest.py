"""Fixtures of the operator's integration tests: the datasets and a cluster ready for models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.operator_fixtures import model_cluster, write_datasets


@pytest.fixture(scope="session")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The "data" claim's content, written once: the tests only read it."""
    return write_datasets(tmp_path_factory.mktemp("data"))


@pytest.fixture
async def cluster(tmp_path: Path, datasets: Path) -> AsyncIterator[Cluster]:
    async with model_cluster(tmp_path, datasets) as cluster:
        yield cluster
