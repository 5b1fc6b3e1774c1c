"""The deployment kit in deploy/: the systemd unit, the alert rules, the dashboard.

Each check runs the tool an operator would (systemd-analyze, promtool) and is skipped, with
the reason, where that tool is missing. `.ci/run` installs promtool; systemd-analyze comes
with Debian's systemd.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY

from shim.jsonl import Lines
from shim.metrics import AuditCollector
from tests.servers import ROOT, Shim

DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
PROMETHEUS = DEPLOY / "prometheus"

# `systemd-analyze security --offline=yes` rates the shipped unit 0.9 with systemd 252. What
# keeps it above 0 is what a network proxy on the host needs (README, "Hardening"): its
# network (PrivateNetwork, AF_INET/AF_INET6, an IP allow list), AF_UNIX for uvloop's signal
# socketpair, the host's root directory, and the RTC read that ProtectClock= implies.
MAX_EXPOSURE = 0.9
ACCEPTED_EXPOSURES = {
    "PrivateNetwork=",
    "RestrictAddressFamilies=~AF_(INET|INET6)",
    "RestrictAddressFamilies=~AF_UNIX",
    "IPAddressDeny=",
    "RootDirectory=/RootImage=",
    "DeviceAllow=",
}


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (Debian package {package})")
    return path


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    rules = ROOT / "deploy" / "prometheus" / "cutover-shim.rules.yml"
    check = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    json.loads((ROOT / "deploy" / "grafana" / "cutover-shim.json").read_text())


def test_every_alert_fires_in_the_rules_unit_tests() -> None:
    """`promtool test rules`: each alert has a firing case (and quiet ones at its threshold)."""
    promtool = tool("promtool", "prometheus")
    tests = PROMETHEUS / "cutover-shim.rules.test.yml"
    result = run(promtool, "test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = set(re.findall(r"- alert: (\w+)", (PROMETHEUS / "cutover-shim.rules.yml").read_text()))
    tested = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n", tests.read_text()))
    assert alerts and alerts == tested, alerts ^ tested


def test_the_example_prometheus_config_loads_the_rules() -> None:
    promtool = tool("promtool", "prometheus")
    result = run(promtool, "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def exported_names() -> set[str]:
    """Every sample name the shim's metrics can carry, from their definitions."""
    names: set[str] = set()
    families = [*REGISTRY.collect(), *AuditCollector(lambda: Lines([], 0)).collect()]
    for family in families:
        if not family.name.startswith("shim_"):
            continue
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        names.update(family.name + s for s in suffixes.get(family.type, [""]))
    return names


def test_dashboard_and_alerts_use_only_metrics_the_shim_exports() -> None:
    """A renamed metric would leave a panel empty and an alert silent, without any error."""
    dashboard = json.loads((DEPLOY / "grafana" / "cutover-shim.json").read_text())
    queries = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    rules = (PROMETHEUS / "cutover-shim.rules.yml").read_text()
    used = set(re.findall(r"\bshim_[a-z_]+", queries + rules))
    assert used - exported_names() == set()
    for needed in [
        "shim_parity_comparisons_total",
        "shim_parity_cosine_bucket",
        "shim_shadow_skipped_total",
        "shim_fallbacks_total",
        "shim_guard_rollbacks_total",
        "shim_flag_percent",
    ]:
        assert needed in queries, f"no dashboard panel shows {needed}"


def verify(unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_systemd_units_and_drop_ins_verify(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    systemd = ROOT / "deploy" / "systemd"
    # The unit names /opt/cutover-shim; verify checks that ExecStart exists, so point it here.
    unit = tmp_path / "cutover-shim.service"
    unit.write_text(
        (systemd / "cutover-shim.service").read_text().replace("/opt/cutover-shim", str(ROOT))
    )
    drop_ins = tmp_path / "cutover-shim.service.d"
    drop_ins.mkdir()
    for conf in [
        *(systemd / "cutover-shim.service.d").glob("*.conf"),
        *(systemd / "examples").glob("*.conf"),
    ]:
        shutil.copy(conf, drop_ins)
    verify(unit)
    frontend = tmp_path / "frontend"
    (frontend / "lakehouse-agent.service.d").mkdir(parents=True)
    (frontend / "lakehouse-agent.service").write_text(
        "[Unit]\nDescription=stand-in for the Bun frontend\n[Service]\nExecStart=/bin/true\n"
    )
    shutil.copy(
        systemd / "lakehouse-agent.service.d" / "go-cutover.conf",
        frontend / "lakehouse-agent.service.d",
    )
    verify(frontend / "lakehouse-agent.service")


def test_unit_security_exposure_stays_at_its_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`systemd-analyze security --offline=yes` on the shipped unit and its drop-ins."""
    analyze = tool("systemd-analyze", "systemd")
    unit = tmp_path / "cutover-shim.service"
    shutil.copy(SYSTEMD / "cutover-shim.service", unit)
    shutil.copytree(SYSTEMD / "cutover-shim.service.d", tmp_path / "cutover-shim.service.d")
    result = run(analyze, "security", "--offline=yes", "--no-pager", str(unit))
    if "--offline" in result.stderr and (
        "unrecognized" in result.stderr or "unknown" in result.stderr
    ):
        pytest.skip(f"this systemd-analyze has no --offline (systemd 250+): {result.stderr}")
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    score = float(found.group(1))
    with capsys.disabled():  # shown in every `make test`, not only when the test fails
        print(f"\nsystemd-analyze security --offline=yes: {score} (bound {MAX_EXPOSURE})")
    details = run(analyze, "security", "--offline=yes", "--json=short", str(unit))
    exposed = {
        item["name"] for item in json.loads(details.stdout) if item["exposure"] not in (None, "0.0")
    }
    assert exposed <= ACCEPTED_EXPOSURES, f"newly exposed: {exposed - ACCEPTED_EXPOSURES}"
    assert score <= MAX_EXPOSURE, result.stdout


def unit_setting(name: str) -> str:
    """The last value of `name=` in the shipped unit's [Service] section."""
    values = re.findall(
        rf"^{name}=(.*)$", (SYSTEMD / "cutover-shim.service").read_text(), re.MULTILINE
    )
    assert values, f"the unit sets no {name}="
    return values[-1]


def test_systemctl_reload_replaces_every_worker(start_shim: Callable[..., Shim]) -> None:
    """The unit's ExecReload=, run as systemd would (its $MAINPID is `shim serve`)."""
    shim = start_shim(workers=2)
    assert shim.server.process is not None
    workers = shim.state_dir / "workers"
    before = {path.stem for path in workers.glob("*.json")}
    command = shlex.split(
        unit_setting("ExecReload").replace("$MAINPID", str(shim.server.process.pid))
    )
    assert subprocess.run(command, timeout=10).returncode == 0
    deadline = time.monotonic() + 40
    while (now := {p.stem for p in workers.glob("*.json")}) & before or len(now) != 2:
        assert time.monotonic() < deadline, (before, now)
        time.sleep(0.1)
    assert shim.server.process.poll() is None  # the supervisor itself kept running


def syscall_group(analyze: str, name: str) -> set[str]:
    """A syscall or @group, expanded through nested groups (`systemd-analyze syscall-filter`)."""
    if not name.startswith("@"):
        return {name}
    lines = run(analyze, "syscall-filter", name).stdout.splitlines()[1:]
    names: set[str] = set()
    for entry in (line.strip() for line in lines):
        if entry and not entry.startswith("#"):
            names |= syscall_group(analyze, entry)
    return names


def refused_by_the_unit(analyze: str) -> set[str]:
    """The syscalls the unit's SystemCallFilter= lines refuse, applied in order as systemd
    does: the first line is an allow list, `~` lines take away, later lines give back."""
    lines = re.findall(
        r"^SystemCallFilter=(.*)$", (SYSTEMD / "cutover-shim.service").read_text(), re.MULTILINE
    )
    assert lines and not lines[0].startswith("~"), "the unit's filter should be an allow list"
    allowed: set[str] = set()
    for line in lines:
        denied = line.startswith("~")
        names = set().union(*(syscall_group(analyze, n) for n in line.lstrip("~").split()))
        allowed = allowed - names if denied else allowed | names
    return syscall_group(analyze, "@known") - allowed


# Refused by the unit, and the shim carries on (README, "Hardening"): OpenBLAS asks mbind()
# for the default memory policy on its buffers and ignores the refusal.
REFUSED_AND_HARMLESS = {"mbind"}


def write_execute(line: str) -> bool:
    """What MemoryDenyWriteExecute= refuses: W+X mappings, making memory executable later."""
    call = line.split("(", 1)[0]
    if call == "mmap":
        return "PROT_EXEC" in line and "PROT_WRITE" in line
    if call in ("mprotect", "pkey_mprotect"):
        return "PROT_EXEC" in line
    return call == "shmat" and "SHM_EXEC" in line


def serve_a_little_of_everything(shim: Shim) -> None:
    with httpx.Client(base_url=shim.url, timeout=10) as client:
        for i in range(10):
            for face in ("/ai/embed", "/_go/v1/embed"):
                answer = client.post(face, json={"texts": [f"worker {i}"]})
                assert answer.status_code == 200, answer.text
        assert client.post("/v1/sql", json={"query": "select 1"}).status_code == 200
        assert client.put("/storage/sandbox", content=b"bytes").status_code < 300
        assert client.get("/storage/sandbox").content == b"bytes"


def stop_traced(shim: Shim) -> None:
    """Stop `shim serve` itself: strace does not pass a SIGINT on, and exits after it."""
    tracer = shim.server.process
    assert tracer is not None
    children = Path(f"/proc/{tracer.pid}/task/{tracer.pid}/children")
    if tracer.poll() is None and (main := children.read_text().split()):
        os.kill(int(main[0]), signal.SIGINT)
        tracer.wait(30)
    shim.stop()


def test_the_shim_serves_under_the_units_syscall_filter_without_write_execute_memory(
    tmp_path: Path, backends: dict[str, str]
) -> None:
    """The unit under systemd cannot run here, so its seccomp part is emulated: strace fails
    every syscall the unit's filter refuses with EPERM (SystemCallErrorNumber=EPERM), while
    two workers start and serve both faces with shadow and parity. It also logs every mapping
    made executable, for what MemoryDenyWriteExecute= would refuse."""
    analyze = tool("systemd-analyze", "systemd")
    strace = tool("strace", "strace")
    refused = ",".join(f"?{name}" for name in sorted(refused_by_the_unit(analyze)))
    trace = tmp_path / "trace"
    shim = Shim(tmp_path, rust_url=backends["rust"], go_url=backends["go"], workers=2)
    shim.server.command = [
        strace,
        *("-f", "-ff", "-qq", "--seccomp-bpf", "-o", str(trace), "-e", "signal=none"),
        *("-e", f"trace=mmap,mprotect,pkey_mprotect,shmat,{refused}"),
        *("-e", f"inject={refused}:error=EPERM"),
        *shim.server.command,
    ]
    probe = run(strace, "-f", "-qq", "-o", "/dev/null", "true")
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here (ptrace refused?): {probe.stderr.strip()}")
    shim.start()
    try:
        shim.cli("flags", "set", "embed", "rust", "--shadow")
        serve_a_little_of_everything(shim)
        time.sleep(1.5)  # shadows compare after the answer; tallies publish once a second
        metrics = httpx.get(f"{shim.admin_url}/metrics").text
        assert 'shim_parity_comparisons_total{endpoint="embed",result="match"}' in metrics
    finally:
        stop_traced(shim)
    # one file per process and thread (-ff), so no call is split by another's
    calls = [line for path in tmp_path.glob("trace.*") for line in path.read_text().splitlines()]
    seen = {c.split("(", 1)[0] for c in calls if "(INJECTED)" in c}
    assert seen <= REFUSED_AND_HARMLESS, f"refused by the unit's filter: {seen}"
    assert [c for c in calls if write_execute(c)] == []
    assert any(c.startswith("mmap(") and "PROT_EXEC" in c for c in calls), "nothing traced"


def test_make_install_gives_a_production_virtualenv_without_test_tools(tmp_path: Path) -> None:
    """The runbook's install: runtime dependencies only, and `shim check` works from there."""
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    prefix = tmp_path / "opt"
    install = subprocess.run(
        ["make", "-C", str(ROOT), "install", f"PREFIX={prefix}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    listed = run(str(prefix / ".venv" / "bin" / "pip"), "list", "--format=json").stdout
    installed = {package["name"].lower() for package in json.loads(listed)}
    assert "cutover-shim" in installed
    assert installed & {"pytest", "pytest-timeout", "hypothesis", "ruff"} == set()
    check = subprocess.run(
        [str(prefix / ".venv" / "bin" / "shim"), "check"],
        cwd=prefix,
        env={"PATH": "/usr/bin:/bin", "SHIM_STATE_DIR": str(tmp_path / "state")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0 and check.stdout.startswith("ok:"), check.stdout + check.stderr
    # The benchmark is not in the wheel: `shim bench` says so in one line (exit 2, no traceback).
    site = next((prefix / ".venv" / "lib").glob("python3*/site-packages"))
    assert not (site / "benchmarks").exists() and not (site / "shim" / "bench.py").exists()
    bench = subprocess.run(
        [str(prefix / ".venv" / "bin" / "shim"), "bench"],
        cwd=prefix,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bench.returncode == 2 and bench.stdout == "", bench.stdout + bench.stderr
    assert len(bench.stderr.splitlines()) == 1 and "make bench" in bench.stderr, bench.stderr
