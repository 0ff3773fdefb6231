"""Fixtures of the operator's integration tests: the datasets and a cluster ready for models."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.operator_fixtures import model_cluster, write_datasets
from tests.support.s3 import S3Server, s3_server


@pytest.fixture(scope="session")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The "data" claim's content, written once: the tests only read it."""
    return write_datasets(tmp_path_factory.mktemp("data"))


@pytest.fixture
async def cluster(tmp_path: Path, datasets: Path) -> AsyncIterator[Cluster]:
    async with model_cluster(tmp_path, datasets) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Server]:
    """One real S3 HTTP server (moto's, a separate process) for the run; each test that uses it
    resets it first."""
    with s3_server() as running:
        yield running
