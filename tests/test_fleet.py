"""Several `shim serve` instances sharing their flags through a real etcd (issue 15)."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import EtcdServer, Shim

TOKEN = "fleet-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
EMBED = {"texts": ["hello"]}

StartInstance = Callable[..., Shim]


@pytest.fixture
def start_instance(tmp_path: Path, backends: dict[str, str]) -> Iterator[Callable[..., Shim]]:
    """Factory: one `shim serve` of the fleet, with its own ports, state dir and log."""
    started: list[Shim] = []

    def start(etcd: EtcdServer, prefix: str, *, workers: int = 2) -> Shim:
        tmp = tmp_path / f"instance-{len(started)}"
        tmp.mkdir()
        shim = Shim(
            tmp,
            rust_url=backends["rust"],
            go_url=backends["go"],
            workers=workers,
            SHIM_ADMIN_TOKEN=TOKEN,
            **etcd.env(prefix),
        )
        started.append(shim.start())
        return shim

    yield start
    for shim in started:
        shim.stop()


def prefix() -> str:
    return f"/fleet-{uuid.uuid4().hex[:8]}/"


def put_flag(shim: Shim, endpoint: str, **body: object) -> httpx.Response:
    return httpx.put(
        f"{shim.admin_url}/_shim/flags/{endpoint}", json=body, headers=AUTH, timeout=10
    )


def served_by(shim: Shim, n: int = 12) -> set[str]:
    """The backends that answered `n` embed requests (spread over the instance's workers)."""
    seen = set()
    for _ in range(n):
        response = httpx.post(f"{shim.url}/ai/embed", json=EMBED, timeout=10)
        assert response.status_code == 200, response.text
        seen.add(response.headers["x-shim-backend"])
    return seen


def live_workers(shim: Shim) -> list[dict[str, object]]:
    document = httpx.get(f"{shim.admin_url}/_shim/flags", timeout=10).json()
    return list(document["workers"])


def wait_for(condition: Callable[[], bool], within: float, step: float = 0.05) -> float:
    """Seconds until `condition()` held; AssertionError past `within`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > within:
            raise AssertionError(f"not within {within} s")
        time.sleep(step)
    return time.monotonic() - start


def test_a_flip_through_one_instance_is_served_by_every_worker_of_three_within_a_second(
    etcd: EtcdServer, start_instance: StartInstance
) -> None:
    where = prefix()
    fleet = [start_instance(etcd, where) for _ in range(3)]
    wait_for(lambda: len(live_workers(fleet[2])) == 6, within=10)
    started = time.monotonic()
    response = put_flag(fleet[0], "embed", serve="go", reason="fleet flip")
    assert response.status_code == 200, response.text
    applied = response.json()["applied"]
    assert time.monotonic() - started < 1.0
    assert applied["complete"] and applied["workers"] == 6, applied
    assert "applied by 6/6 workers" in applied["summary"]
    for shim in fleet:
        assert served_by(shim) == {"go"}
    # every instance's own view, and the fleet's audit with the instance it came from
    for shim in fleet:
        document = httpx.get(f"{shim.admin_url}/_shim/flags", timeout=10).json()
        assert document["generation"] == 1 and document["endpoints"]["embed"]["serve"] == "go"
    history = fleet[2].cli("flags", "--history").stdout
    assert "fleet flip" in history and "pid" in history
    scraped = httpx.get(f"{fleet[1].admin_url}/metrics", timeout=10).text
    assert 'shim_flag_changes_total{actor="api",endpoint="embed"} 1.0' in scraped
    assert "shim_flag_store_up 1.0" in scraped
    assert "shim_flag_store_apply_lag_seconds_count" in scraped


def test_concurrent_writers_through_three_instances_all_land_in_order(
    etcd: EtcdServer, start_instance: StartInstance
) -> None:
    where = prefix()
    fleet = [start_instance(etcd, where, workers=1) for _ in range(3)]
    endpoints = ["embed", "sql", "vectors_search"]
    statuses: list[int] = []

    def write(shim: Shim, endpoint: str) -> None:
        for i in range(6):
            statuses.append(put_flag(shim, endpoint, shadow=i % 2 == 0).status_code)

    threads = [
        threading.Thread(target=write, args=pair) for pair in zip(fleet, endpoints, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 18
    history = fleet[1].cli("flags", "--history").stdout.splitlines()[1:]
    generations = [int(line.split()[1]) for line in history]
    assert generations == list(range(1, 19))
    document = httpx.get(f"{fleet[2].admin_url}/_shim/flags", timeout=10).json()
    assert document["generation"] == 18
    assert all(document["endpoints"][e]["shadow"] is False for e in endpoints)  # i=5 last


@pytest.mark.parametrize("store", ["file", "etcd"])
def test_a_stale_expected_generation_is_409_conflict_with_the_state_now(
    store: str, etcd: EtcdServer, start_instance: StartInstance, start_shim: Callable[..., Shim]
) -> None:
    if store == "etcd":
        shim = start_instance(etcd, prefix(), workers=1)
    else:
        shim = start_shim(SHIM_ADMIN_TOKEN=TOKEN)
    assert put_flag(shim, "embed", serve="go", expected_generation=0).status_code == 200
    stale = put_flag(shim, "embed", serve="rust", expected_generation=0)
    assert stale.status_code == 409, stale.text
    body = stale.json()
    assert body["error"]["code"] == "conflict" and "generation 1" in body["error"]["message"]
    assert body["generation"] == 1 and body["current"]["serve"] == "go"
    fresh = put_flag(shim, "embed", serve="rust", expected_generation=1, reason="fresh form")
    assert fresh.status_code == 200 and fresh.json()["generation"] == 2


def test_etcd_paused_then_killed_traffic_is_unaffected_and_instances_catch_up(
    own_etcd: EtcdServer, start_instance: StartInstance
) -> None:
    where = prefix()
    fleet = [start_instance(own_etcd, where) for _ in range(2)]
    failures: list[str] = []
    done = threading.Event()
    count = [0]

    def traffic() -> None:
        with httpx.Client(timeout=10) as client:
            while not done.is_set():
                for shim in fleet:
                    try:
                        response = client.post(f"{shim.url}/ai/embed", json=EMBED)
                        if response.status_code != 200:
                            failures.append(f"{response.status_code} {response.text[:200]}")
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                    count[0] += 1

    def readyz(shim: Shim) -> httpx.Response:
        return httpx.get(f"{shim.admin_url}/_shim/readyz", timeout=10)

    loader = threading.Thread(target=traffic)
    loader.start()
    try:
        assert readyz(fleet[0]).json()["flag_store"] == "ok"
        own_etcd.signal(signal.SIGSTOP)
        wait_for(lambda: all(readyz(s).json()["flag_store"] == "stale" for s in fleet), 10)
        assert all(readyz(s).status_code == 200 for s in fleet)
        refused = put_flag(fleet[0], "embed", serve="go")
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "flag_store_unavailable"
        cli = fleet[1].cli("flags", "set", "embed", "go", check=False)
        assert cli.returncode != 0 and "cannot be reached" in cli.stderr
        own_etcd.kill()  # and now it is gone altogether
        time.sleep(1)
        own_etcd.start()
        back = time.monotonic()
        wait_for(lambda: all(readyz(s).json()["flag_store"] == "ok" for s in fleet), 15)
        fleet[1].cli("flags", "set", "embed", "go", "--reason", "after the outage")
        caught_up = time.monotonic() - back
        for shim in fleet:
            assert served_by(shim) == {"go"}
        print(f"caught up {caught_up:.2f} s after etcd answered again")
    finally:
        done.set()
        loader.join()
    assert count[0] > 20
    assert failures == []


def test_an_instance_started_while_etcd_is_down_serves_its_cached_flags(
    own_etcd: EtcdServer, start_instance: StartInstance
) -> None:
    where = prefix()
    shim = start_instance(own_etcd, where, workers=1)
    assert put_flag(shim, "embed", serve="go").status_code == 200
    shim.stop()
    own_etcd.kill()
    shim.start()
    assert served_by(shim, 3) == {"go"}
    ready = httpx.get(f"{shim.admin_url}/_shim/readyz", timeout=10)
    assert ready.status_code == 200 and ready.json()["flag_store"] == "stale"
    assert "last good copy" in shim.server.log.read_text()


def test_two_prefixes_on_one_etcd_never_see_each_other(
    etcd: EtcdServer, start_instance: StartInstance
) -> None:
    first = start_instance(etcd, prefix(), workers=1)
    second = start_instance(etcd, prefix(), workers=1)
    assert put_flag(first, "embed", serve="go").status_code == 200
    assert served_by(first, 3) == {"go"}
    assert served_by(second, 3) == {"rust"}
    assert "no flag changes recorded yet" in second.cli("flags", "--history").stdout
    assert len(live_workers(first)) == 1 and len(live_workers(second)) == 1


def test_a_stopped_instance_drops_out_of_n_of_n_within_15_seconds(
    etcd: EtcdServer, start_instance: StartInstance
) -> None:
    where = prefix()
    first, second = start_instance(etcd, where), start_instance(etcd, where)
    wait_for(lambda: len(live_workers(first)) == 4, within=10)
    assert second.server.process is not None
    pids = [second.server.process.pid] + [
        int(p.stem) for p in (second.state_dir / "workers").glob("*.json")
    ]
    for pid in pids:  # gone without a goodbye: only the lease can tell
        os.kill(pid, signal.SIGKILL)
    second.server.process.wait()
    took = wait_for(lambda: len(live_workers(first)) == 2, within=15, step=0.25)
    response = put_flag(first, "embed", serve="go")
    assert "applied by 2/2 workers" in response.json()["applied"]["summary"]
    print(f"a killed instance dropped out in {took:.1f} s")
