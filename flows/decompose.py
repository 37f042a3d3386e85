"""Flow for Dataset Decomposition: corpus -> tokens -> power-of-two buckets (+ concat-and-chunk baseline),
streamed into one staged version and published with its statistics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow as prefect_flow
from prefect import task
from prefect.cache_policies import NONE

from lendata.build import BuildReport
from lendata.methods import decompose_build


@task(cache_policy=NONE, name="tokenise, decompose and write shards")
def decompose(recipe, store, overwrite, progress):
    return decompose_build.build(recipe, Path(store), overwrite=overwrite, progress=progress)


@prefect_flow(name="decompose", log_prints=False)
def flow(recipe: dict[str, Any], store: str, overwrite: bool = False, progress: bool = True) -> BuildReport:
    started = time.monotonic()
    report = decompose(recipe, store, overwrite, progress)
    report.seconds = round(time.monotonic() - started, 2)
    return report
