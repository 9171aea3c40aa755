"""A chaos soak behind a real Ingress: nginx (as ingress-nginx configures it) in front of two `bgproxy serve`
replicas on the ConfigMap store, in front of blue and green apps; for the whole run at once, every kind of client
and every kind of fault (tests/support/soak/).

Its length is a knob: BGPROXY_SOAK_SECONDS (60 in CI; 1800 by hand). BGPROXY_SOAK_SEED repeats a run's random
choices, BGPROXY_SOAK_REPORT=PATH writes the figures as JSON, BGPROXY_SOAK_ENDPOINTS=passive keeps both replicas
in the Ingress's endpoints all the time (nginx's passive failover alone, no readiness), BGPROXY_SOAK_RESTART_EVERY
sets the pause between rolling restarts. The figures are printed
(run with -s, or look for the lines after "measured:").
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from tests.support import ingress
from tests.support.configmap import CM
from tests.support.soak import report
from tests.support.soak.chaos import Soak, lanes
from tests.support.soak.cluster import Cluster
from tests.support.soak.resources import not_flat
from tests.support.soak.timeline import Timeline
from tests.support.soak.workload import Workload

pytestmark = pytest.mark.slow

SECONDS = float(os.environ.get("BGPROXY_SOAK_SECONDS", "60"))
SEED = int(os.environ.get("BGPROXY_SOAK_SEED", str(random.randrange(1 << 31))))
ENDPOINTS = os.environ.get("BGPROXY_SOAK_ENDPOINTS", "readiness")
REPORT = os.environ.get("BGPROXY_SOAK_REPORT")
# Pauses between rolling restarts: ~20 s in a short run; 10 minutes in a long one, so that a process lives long
# enough for its growth per 10 minutes to be measured rather than extrapolated. BGPROXY_SOAK_RESTART_EVERY sets it.
RESTART_EVERY = float(os.environ.get("BGPROXY_SOAK_RESTART_EVERY", min(600.0, max(20.0, SECONDS / 3))))
SAMPLE_EVERY = 1.0 if SECONDS <= 300 else 5.0
WARMUP = 10.0 if SECONDS <= 300 else 60.0  # seconds of each process's life left out of its growth figures
# What a Deployment would set: a grace that outlasts the endpoints update (here within 0.25 s; in a cluster about
# a second), a drain timeout above the longest request (uploads and slow requests here take up to ~2 s), health
# probes fast enough that a few-second flap takes a colour down.
REPLICA_SETTINGS = {
    "DRAIN_GRACE": "2",
    "DRAIN_TIMEOUT": "10",
    "HEALTH_PATH": "/healthz",
    "HEALTH_INTERVAL": "0.5",
    "HEALTH_TIMEOUT": "1",
    "LOG_LEVEL": "info",
}
FINISH = 90.0  # seconds the chaos actions in progress and the clients may take to finish after the run


@pytest.mark.timeout(SECONDS + 150)
async def test_soak_behind_an_ingress_fails_no_request_serves_the_right_colour_and_leaks_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    why = ingress.missing()
    if why is not None:
        pytest.skip(why)
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    cluster = Cluster(tmp_path, settings=REPLICA_SETTINGS, endpoints=ENDPOINTS)
    try:
        await cluster.start()
        rng = random.Random(SEED)
        timeline = Timeline(frozenset({"blue"}))
        soak = Soak(cluster, timeline, rng)
        work = Workload(cluster, timeline, random.Random(SEED + 1))
        cluster.start_sampler(SAMPLE_EVERY, stop=lambda: False)
        clients: list[Coroutine[Any, Any, None]] = [
            *(work.keepalive_client() for _ in range(3)),
            *(work.fresh_client() for _ in range(2)),
            *(work.download_client() for _ in range(2)),
            work.upload_client("/upload"),
            work.upload_client("/upload-stream"),
            *(work.websocket_client((5.0, 20.0)) for _ in range(3)),
        ]
        client_tasks = [asyncio.create_task(c) for c in clients]
        stop = asyncio.Event()
        chaos = [
            asyncio.create_task(lane.run(soak, stop)) for lane in lanes(duration=SECONDS, restart_every=RESTART_EVERY)
        ]
        await asyncio.sleep(SECONDS)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*chaos), FINISH)
        work.stopping = True
        await asyncio.wait_for(asyncio.gather(*client_tasks), FINISH)
        final = await cluster.converge()
        watching = await cluster.all_watching()
        states = await cluster.states()
    finally:
        await cluster.close()

    text = report.render(soak, work.stats, seconds=SECONDS, seed=SEED, warmup=WARMUP, final=final)
    with capsys.disabled():
        print(f"\nmeasured: {text}")
    if REPORT:
        figures = report.as_json(soak, work.stats, seconds=SECONDS, seed=SEED, warmup=WARMUP, final=final)
        await asyncio.to_thread(Path(REPORT).write_text, json.dumps(figures))

    assert work.stats.failures == [], text
    assert [e for e in soak.events if e.result == "failed"] == [], text
    assert cluster.anomalies == [] and soak.unconverged == [], text
    # Converged: both replicas hold the very state the ConfigMap holds.
    assert final is not None, text
    stored = json.loads((cluster.api.get_configmap(CM) or {})["data"]["state"])
    for name, state in states.items():
        assert state is not None, name
        assert (state["revision"], state["active"]) == (stored["revision"], stored["active"]), (name, state, stored)
    assert watching, "a replica did not get its ConfigMap watch back"
    # Flat: RSS, open fds, threads and asyncio tasks of every replica process.
    growth = [p for m in cluster.members for g in m.generations for p in not_flat(g, WARMUP)]
    assert growth == [], text
    # The run did what it says: every kind of client and of fault, flips that landed.
    assert {"keepalive", "fresh", "download", "upload /upload", "upload /upload-stream", "websocket"} <= set(
        work.stats.counts
    ), text
    done = {e.action for e in soak.events if e.result == "done"}
    assert {"kubectl patch", "health flap", "API server outage", "rolling restart"} <= done, text
    assert any(a.startswith("admin ") for a in done) and soak.timeline.changes() >= 5, text
