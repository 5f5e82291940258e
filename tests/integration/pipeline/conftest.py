"""A running pipeline per test module: its own database and topics, a worker and a relay."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from ledgerflow.testkit.pipeline import Pipeline, running_pipeline


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pipeline(
    postgres: Any, kafka: Any, ledgerflow_db_template: str, tmp_path_factory: Any
) -> AsyncIterator[Pipeline]:
    log_dir = tmp_path_factory.mktemp("processes")
    async with running_pipeline(postgres, kafka, ledgerflow_db_template, log_dir) as p:
        yield p
