"""The route table: the shipped one is valid and complete; a bad one names its key."""

from __future__ import annotations

import copy
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from shim.errors import ConfigError
from shim.route_config import load_routes, parse_routes

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config" / "routes.toml"


def shipped() -> dict[str, Any]:
    return tomllib.loads(SHIPPED.read_text())


def test_shipped_table_declares_the_eight_endpoints_of_the_contract() -> None:
    """The contract's eight built-in endpoints, plus those declared with adapter = "jq"
    (the contract's "Endpoints declared in the route table": here the worked example)."""
    table = load_routes(SHIPPED)
    declared = {n for n, r in table.routes.items() if r.adapter and r.adapter.name == "jq"}
    assert declared == {"rerank"}
    assert set(table.routes) - declared == {
        "embed",
        "vectors_search",
        "retrieve",
        "sql",
        "storage",
        "chat",
        "matrix_search",
        "playbooks_record",
    }
    assert {n for n, r in table.routes.items() if r.go_only} == {
        "matrix_search",
        "playbooks_record",
    }
    assert all(r.default == "rust" for r in table.routes.values() if not r.go_only)
    assert table["storage"].idempotent_methods == {"GET", "HEAD"}
    assert table["chat"].idempotent_methods == frozenset()
    sql = table[
        "sql"
    ]  # read-only statements only: the sql adapter's rule (Route.read_only_sql was)
    assert sql.repeat_rule == "read-only statements"
    assert sql.may_repeat({"sql": "select 1"}, "rust")
    assert not sql.may_repeat({"query": "drop table workers"}, "go")


@pytest.mark.parametrize(
    ("path", "endpoint", "client", "params"),
    [
        ("/ai/embed", "embed", "rust", {}),
        ("/v1/embed", "embed", "go", {}),
        ("/_go/v1/embed", "embed", "go", {}),
        ("/storage/a/b%2Fc", "storage", "rust", {"key": "a/b%2Fc"}),
        ("/_go/v1/storage/k", "storage", "go", {"key": "k"}),
        ("/_go/v1/matrix/playbooks/record", "playbooks_record", "go", {}),
    ],
)
def test_paths_match_their_endpoint_and_dialect(
    path: str, endpoint: str, client: str, params: dict[str, str]
) -> None:
    found = load_routes(SHIPPED).match(path)
    assert found is not None
    assert (found.route.name, found.client, dict(found.params)) == (endpoint, client, params)


@pytest.mark.parametrize(
    "path", ["/", "/_go/ai/embed", "/ai/embed/", "/v1/embedx", "/_shim/flags", "/storage", "/_go"]
)
def test_unknown_paths_match_nothing(path: str) -> None:
    assert load_routes(SHIPPED).match(path) is None


def _broken(change: Any) -> dict[str, Any]:
    document = copy.deepcopy(shipped())
    change(document["routes"])
    return document


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda r: r["embed"]["rust"].update(path="ai/embed"), "routes.embed.rust.path"),
        (lambda r: r["embed"].update(adapter="nope"), "routes.embed.adapter"),
        (lambda r: r["matrix_search"].update(default="rust"), "routes.matrix_search.default"),
        (lambda r: r["sql"]["go"].update(path="/v1/embed"), "routes.sql.go.path"),
        (lambda r: r["chat"].update(idempotent="sometimes"), "routes.chat.idempotent"),
        (
            lambda r: r["embed"]["options"].update(normalize_go_face="yes"),
            "routes.embed.options.normalize_go_face",
        ),
        (lambda r: r["embed"].update(colour="red"), "routes.embed.colour"),
        (lambda r: r["chat"]["rust"].update(methods=["FETCH"]), "routes.chat.rust.methods"),
        (lambda r: r["storage"].update(read_timeout=-1), "routes.storage.read_timeout"),
    ],
)
def test_bad_table_names_the_key(change: Any, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_routes(_broken(change))
    assert caught.value.key == key


def test_shim_check_fails_with_one_line_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "routes.toml"
    bad.write_text(SHIPPED.read_text().replace('adapter = "sql"', 'adapter = "sqll"'))
    config = tmp_path / "shim.toml"
    config.write_text(f'routes_file = "{bad}"\nstate_dir = "{tmp_path / "state"}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "shim", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "routes.sql.adapter" in result.stderr
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    ok = subprocess.run(
        [sys.executable, "-m", "shim", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("ok: 9 endpoints")  # eight built-in, rerank declared


@pytest.mark.parametrize(
    ("change", "key", "says"),
    [
        (
            lambda r: r["chat"].update(adapter="no_such_pkg.adapters:CHAT"),
            "adapter",
            "cannot import",
        ),
        (lambda r: r["chat"].update(adapter="adapters.chat:NOPE"), "adapter", "has no 'NOPE'"),
        (lambda r: r["chat"].update(adapter="adapters.chat:TEXT_FIELD"), "adapter", "lacks"),
        (lambda r: r["chat"].update(idempotent="read-only"), "idempotent", "judges each request"),
        (lambda r: r["sql"]["parity"].update(comparator="cosine"), "parity.comparator", '"json"'),
    ],
)
def test_an_adapter_is_a_name_or_an_importable_one_and_its_rules_hold(
    change: Any, key: str, says: str
) -> None:
    document = shipped()
    document["routes"]["sql"]["parity"] = {}
    change(document["routes"])
    with pytest.raises(ConfigError) as caught:
        parse_routes(document)
    endpoint = "sql" if "comparator" in key else "chat"
    assert caught.value.key == f"routes.{endpoint}.{key}"
    assert says in caught.value.message


def test_an_importable_adapter_serves_like_a_built_in_one() -> None:
    document = shipped()
    document["routes"]["chat"]["adapter"] = "adapters.chat:CHAT"
    document["routes"]["embed"]["adapter"] = "adapters.embed:EMBED"
    table = parse_routes(document)
    assert table["chat"].adapter is load_routes(SHIPPED)["chat"].adapter
    assert table["embed"].parity.comparator == "cosine"  # the adapter's, not a name's
    assert table["embed"].describe_loss("magnitude").startswith("raw vector magnitudes")
