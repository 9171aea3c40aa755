"""The admin calls of gradual releases: bad input to each is a 400 or 409 that names the problem and changes
nothing; what is accepted at the edges; the history entries; and the weight and step metrics following the state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bgproxy.core.model import MAX_STEPS
from tests.support.admin import Admin, routing_part
from tests.support.servers import TIMEOUT, StartProxy


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        yield s


@pytest.fixture
async def admin(start_proxy: StartProxy, session: aiohttp.ClientSession) -> Admin:
    return Admin(session, await start_proxy())


LONG = 600  # seconds a step holds in these tests: no step is taken while they look

# (path, body, what the message must say): never valid, whatever the state -> 400
NEVER_VALID: list[tuple[str, Any, str]] = [
    ("/shift", {"weight": -1}, "'weight' must be at least 0, got -1"),
    ("/shift", {"weight": 101}, "'weight' must be at most 100, got 101"),
    ("/shift", {"weight": 1e3}, "'weight' must be at most 100"),
    ("/shift", {"weight": 20.5}, "'weight' must be an integer, got 20.5"),
    ("/shift", {"weight": "20"}, "'weight' must be an integer, got '20'"),
    ("/shift", {"weight": True}, "'weight' must be an integer, got true"),
    ("/shift", {"weight": None}, "'weight' must be an integer, got null"),
    ("/shift", {"weight": [20]}, "'weight' must be an integer"),
    ("/shift", {}, "missing field 'weight'"),
    ("/shift", None, "expected a JSON object with 'weight', got an empty body"),
    ("/shift", [20], "expected a JSON object with 'weight', got an array"),
    ("/shift", {"weight": 20, "steps": [10]}, "/shift takes no 'steps'; use /promote"),
    ("/shift", {"weight": 20, "percent": 20}, "unknown field 'percent'"),
    ("/promote", {"steps": []}, "'steps' must have at least 1 items"),
    ("/promote", {"steps": [50, 10]}, "'steps' must rise strictly, got [50, 10]"),
    ("/promote", {"steps": [10, 10]}, "'steps' must rise strictly"),
    ("/promote", {"steps": [10, 50, 40, 100]}, "'steps' must rise strictly"),
    ("/promote", {"steps": [0, 50]}, "'steps[0]' must be at least 1, got 0"),
    ("/promote", {"steps": [10, 101]}, "'steps[1]' must be at most 100, got 101"),
    ("/promote", {"steps": [-10]}, "'steps[0]' must be at least 1"),
    ("/promote", {"steps": list(range(1, MAX_STEPS + 2))}, f"'steps' must have at most {MAX_STEPS} items"),
    ("/promote", {"steps": "10,50"}, "'steps' must be an array"),
    ("/promote", {"steps": 50}, "'steps' must be an array"),
    ("/promote", {"steps": [10, "50"]}, "'steps[1]' must be an integer"),
    ("/promote", {"steps": [10.5]}, "'steps[0]' must be an integer"),
    ("/promote", {"steps": [10], "interval": -1}, "'interval' must be at least 1"),
    ("/promote", {"steps": [10], "interval": 0}, "'interval' must be at least 1"),
    ("/promote", {"steps": [10], "interval": 0.5}, "'interval' must be at least 1"),
    ("/promote", {"steps": [10], "interval": 86401}, "'interval' must be at most 86400"),
    ("/promote", {"steps": [10], "interval": 1e12}, "'interval' must be at most 86400"),
    ("/promote", {"steps": [10], "interval": "60"}, "'interval' must be a number"),
    ("/promote", {"steps": [10], "interval": True}, "'interval' must be a number"),
    ("/promote", {"interval": 60}, "'interval' goes with 'steps'"),
    ("/promote", {"weight": 20}, "/promote takes no 'weight'; use /shift"),
    ("/pause", {"weight": 20}, "/pause takes no 'weight'; use /shift"),
    ("/resume", {"steps": [10]}, "/resume takes no 'steps'; use /promote"),
    ("/abort", {"to": "blue"}, "/abort takes no 'to'; use /switch"),
    ("/abort", {"force": "yes"}, "'force' must be true or false"),
]


async def refused(admin: Admin, path: str, body: Any, status: int, says: str) -> None:
    """The call is refused with `status` and a message saying `says`, and the state is exactly as before."""
    before = routing_part(await admin.state())
    history = await admin.history()
    code, answer = await admin.call("POST", path, body)
    assert (code, set(answer)) == (status, {"error"}), (path, body, answer)
    assert says in answer["error"], (path, body, answer)
    assert routing_part(await admin.state()) == before
    assert await admin.history() == history


@pytest.mark.parametrize(("path", "body", "says"), NEVER_VALID)
async def test_bad_input_is_a_400_naming_the_problem_and_changes_nothing(
    admin: Admin, path: str, body: Any, says: str
) -> None:
    await refused(admin, path, body, 400, says)


@pytest.mark.parametrize(("path", "body", "says"), NEVER_VALID[::3])
async def test_bad_input_during_a_stepped_promotion_changes_nothing_either(
    admin: Admin, path: str, body: Any, says: str
) -> None:
    await admin.post("/promote", {"steps": [10, 50], "interval": LONG})
    await refused(admin, path, body, 400, says)


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/pause", "nothing to pause: no stepped promotion is running (weight 0)"),
        ("/resume", "nothing to resume: no stepped promotion is running (weight 0)"),
        ("/abort", "nothing to abort: no shift or stepped promotion is running, blue serves all traffic"),
    ],
)
async def test_pause_resume_abort_with_nothing_running_are_409(admin: Admin, path: str, says: str) -> None:
    await refused(admin, path, {}, 409, says)
    await refused(admin, path, None, 409, says)  # the body is optional


async def test_pause_and_resume_during_a_shift_are_409(admin: Admin) -> None:
    await admin.post("/shift", {"weight": 20})
    await refused(admin, "/pause", {}, 409, "nothing to pause: no stepped promotion is running (weight 20)")
    await refused(admin, "/resume", {}, 409, "nothing to resume")


async def test_a_second_stepped_promotion_and_a_double_pause_or_resume_are_409(admin: Admin) -> None:
    await admin.post("/promote", {"steps": [10, 50], "interval": LONG})
    await refused(admin, "/promote", {"steps": [20, 60], "interval": 5}, 409, "already running (step 1 of 2)")
    await refused(admin, "/resume", {}, 409, "nothing to resume: it is not paused")
    await admin.post("/pause")
    await refused(admin, "/pause", {}, 409, "nothing to pause: it is paused already")
    await refused(admin, "/promote", {"steps": [20, 60]}, 409, "already running")
    # a plan that can never be valid is a 400 even while one runs: the person's mistake comes first
    await refused(admin, "/promote", {"steps": [60, 20]}, 400, "'steps' must rise strictly")


@pytest.mark.parametrize(
    ("path", "body", "expect"),
    [
        ("/shift", {"weight": 24.0}, {"weight": 24, "rollout": None}),  # JSON Schema's integer: 24.0 is one
        ("/shift", {"weight": 0}, None),  # already 0: no change, the state as it is
        ("/shift", {"weight": 100}, {"weight": 100, "active": "blue"}),
        ("/promote", {"steps": [100]}, {"weight": 100, "rollout": {"steps": [100], "interval": 60.0, "step": 0}}),
        (
            "/promote",
            {"steps": [10.0, 50], "interval": 1},
            {"weight": 10, "rollout": {"steps": [10, 50], "interval": 1.0}},
        ),
        ("/promote", {"steps": [1], "interval": 86400}, {"rollout": {"interval": 86400.0}}),
        ("/promote", {"steps": list(range(81, 101))}, {"weight": 81}),
        ("/promote", {"steps": [5], "interval": None}, {"rollout": {"interval": 60.0}}),  # null: absent, the default
        ("/promote", {"steps": None}, {"active": "green", "weight": 0, "rollout": None}),  # instant
    ],
)
async def test_accepted_at_the_edges(admin: Admin, path: str, body: Any, expect: dict[str, Any] | None) -> None:
    before = await admin.state()
    answer = await admin.post(path, body)
    assert routing_part(answer) == routing_part(await admin.state())
    if expect is None:
        assert routing_part(answer) == routing_part(before)
        return
    assert answer["revision"] == before["revision"] + 1
    for key, value in expect.items():
        if isinstance(value, dict):
            assert answer[key].items() >= value.items(), answer[key]
        else:
            assert answer[key] == value, (key, answer)


async def test_state_and_history_show_weight_rollout_and_event(admin: Admin) -> None:
    s = await admin.post("/shift", {"weight": 20, "reason": "canary"})
    assert (s["weight"], s["rollout"], s["standby"], s["source"], s["reason"]) == (20, None, "green", "admin", "canary")
    s = await admin.post("/promote", {"steps": [30, 70], "interval": LONG, "reason": "release 9"})
    assert s["rollout"] == {
        "steps": [30, 70],
        "interval": float(LONG),
        "step": 0,
        "step_started_at": s["updated_at"],
        "paused": False,
    }
    await admin.post("/pause", {"reason": "p"})
    await admin.post("/resume", {"reason": "r"})
    await admin.post("/abort", {"reason": "a"})
    await admin.post("/shift", {"weight": 5})
    await admin.post("/promote")
    history = await admin.history()
    assert [(h["event"], h["from"], h["to"], h["weight"], h["reason"]) for h in history] == [
        ("shift", "blue", "blue", 20, "canary"),
        ("step", "blue", "blue", 30, "release 9"),
        ("paused", "blue", "blue", 30, "p"),
        ("resumed", "blue", "blue", 30, "r"),
        ("aborted", "blue", "blue", 0, "a"),
        ("shift", "blue", "blue", 5, ""),
        ("switch", "blue", "green", 0, ""),
    ]
    assert [h["revision"] for h in history] == list(range(1, 8))


async def test_weight_and_rollout_step_metrics_follow_the_state(admin: Admin) -> None:
    async def metrics() -> tuple[float | None, float | None]:
        return await admin.metric("bgproxy_weight"), await admin.metric("bgproxy_rollout_step")

    assert await metrics() == (0, -1)
    await admin.post("/shift", {"weight": 20})
    assert await metrics() == (20, -1)
    await admin.post("/promote", {"steps": [10, 50, 100], "interval": 1})
    assert await metrics() == (10, 0)
    await admin.wait_state("at step 2", lambda s: s["weight"] == 50)
    assert await metrics() == (50, 1)
    await admin.post("/pause")
    assert await metrics() == (50, 1)
    await admin.post("/abort")
    assert await metrics() == (0, -1)
    await admin.post("/promote", {"steps": [100], "interval": 1})
    assert await metrics() == (100, 0)
    await admin.wait_state("promoted", lambda s: s["rollout"] is None)
    assert await metrics() == (0, -1)
    assert await admin.metric("bgproxy_active_color", color="green") == 1
    assert await admin.metric("bgproxy_state_revision") == 7
