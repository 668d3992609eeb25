"""The Grafana dashboard the packages install (/usr/share/numahook/grafana/numahook.json):
every expression names metrics numahookd exports, parses as PromQL (promtool), and the
metrics of issue 31's item 4 each have a panel."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from numahook.daemon import domainmetrics
from numahook.daemon.publisher import daemon_metrics
from numahook.daemon.reconcile import Stats
from numahook.node import metrics
from tests.support.nodes import capability
from tests.support.promtool import promtool

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "packaging" / "grafana" / "numahook.json"
#: a metric name as PromQL spells it; ours all start with numahook_
_OURS = re.compile(r"\bnumahook_[a-zA-Z0-9_]+")
#: Grafana's variables, as Grafana substitutes them before Prometheus sees the query
_VARIABLES = {"$__rate_interval": "5m", "$__range": "6h", "$instance": ".+", "$domain": ".+"}
#: Grafana's own query functions in variables: label_values(SELECTOR, LABEL)
_LABEL_VALUES = re.compile(r"label_values\((.*),\s*\w+\)")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in items:
        yield p
        yield from panels(p.get("panels", []))


def queries() -> list[str]:
    """Every PromQL expression: the panels' targets, then the variables' selectors."""
    out = [t["expr"] for p in panels(dashboard()["panels"]) for t in p.get("targets", [])]
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            m = _LABEL_VALUES.fullmatch(var["query"]["query"])
            assert m, f"variable {var['name']}: not label_values(SELECTOR, LABEL)"
            assert var["definition"] == var["query"]["query"]
            out.append(m.group(1))
    return out


def exported(tmp_path: Path) -> set[str]:
    """Every family numahookd can write into numahook.prom."""
    node = {m.name for m in metrics.node_metrics(capability(tmp_path))}
    return node | {m.name for m in daemon_metrics(1, Stats(), 0)} | set(domainmetrics.NAMES)


def test_every_expression_names_a_metric_numahookd_exports(tmp_path: Path) -> None:
    ours = exported(tmp_path)
    for expr in queries():
        named = set(_OURS.findall(expr))
        assert named, f"{expr!r} names no numahook metric"
        assert named <= ours, f"{expr!r} names {sorted(named - ours)}, which numahookd " \
                              "does not export"


def test_each_metric_per_domain_and_node_has_a_panel() -> None:
    used = {name for expr in queries() for name in _OURS.findall(expr)}
    assert set(domainmetrics.NAMES) - used == set()


def test_every_expression_is_promql(tmp_path: Path) -> None:
    """promtool parses them as recording rules, with Grafana's variables substituted."""
    exprs = []
    for expr in queries():
        for var, value in _VARIABLES.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"{expr!r} uses a variable the dashboard does not define"
        exprs.append(expr)
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"numahook:dashboard_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    proc = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_dashboard_is_self_contained_and_well_formed() -> None:
    """Imported or provisioned as it is: the data source is a variable (no __inputs to
    fill in), ids and grid positions are there, and each panel's refIds are its own."""
    doc = dashboard()
    assert doc["uid"] == "numahook" and doc["title"] == "numahook"
    names = [v["name"] for v in doc["templating"]["list"]]
    assert names == ["datasource", "instance", "domain"]
    ids = [p["id"] for p in panels(doc["panels"])]
    assert len(ids) == len(set(ids))
    for p in panels(doc["panels"]):
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
        refs = [t["refId"] for t in p.get("targets", [])]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p.get("targets", []):
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert "__inputs" not in doc


@pytest.mark.parametrize(("packaging", "installed"), [
    ("debian/rules", "$(PKG)/usr/share/numahook/grafana/numahook.json"),
    ("rpm/numahook.spec", "%{buildroot}%{_datadir}/numahook/grafana/numahook.json")])
def test_both_packages_install_it(packaging: str, installed: str) -> None:
    """scripts/check-rpm-spec compares the two packages' layouts and %files; this names
    the file in both, so that neither leaves the dashboard out."""
    text = " ".join((REPO / "packaging" / packaging).read_text().replace("\\\n", " ").split())
    assert f"packaging/grafana/numahook.json {installed}" in text
