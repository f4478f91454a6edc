"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def dask_cluster() -> Iterator[str]:
    """The address of one two-worker ``LocalCluster`` on loopback for the whole session (its
    start costs a few seconds): what ``run.scheduler`` names in the Dask tests."""
    pytest.importorskip("distributed")
    from gbrank.executor import close_executors, local_cluster

    with local_cluster(2) as address:
        yield address
        close_executors()  # the clients the tests opened, before the cluster goes
