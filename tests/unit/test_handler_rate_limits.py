"""Handlers own their rate-limit defaults (``Handler.default_rate_limits``): the registry collects them from
every registered handler, plugins included (:func:`batcher.registry.handler_rate_limits`); the daemon's
HTTP runtime paces by them unless a TOML ``[rate_limits."ns:"]`` entry overrides one; two handlers
declaring one namespace differently stop the registry load; and no module of ``batcher/`` names a
provider's namespace."""

from __future__ import annotations

import ast
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from batcher import RateLimit, registry
from batcher.errors import ConfigError
from batcher.registry import check_handler, handler_rate_limits, load_registry
from batcher.settings import load_settings
from batcher.testing import test_services, test_settings
from tests.plugins.limited import API, SEARCH, MalformedHandler
from tests.unit.test_job_type_names import ROOT, runtime_modules


def use_plugins(monkeypatch: pytest.MonkeyPatch, *classes: str) -> None:
    """The registry sees entry points to these classes of ``tests.plugins.limited`` (as if installed)."""
    points = [EntryPoint(name=name, value=f"tests.plugins.limited:{name}", group="batcher.handlers")
              for name in classes]
    monkeypatch.setattr(registry, "entry_points", lambda group: points if group == "batcher.handlers" else [])


def test_a_plugin_handlers_defaults_are_collected(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plugin's namespaces join the built-in handlers' defaults."""
    use_plugins(monkeypatch, "LimitedHandler")
    defaults = handler_rate_limits(load_registry())
    assert defaults["limited:api:"] == API and defaults["limited:search:"] == SEARCH
    assert "github:api:" in defaults


async def test_the_daemon_paces_by_plugin_defaults_under_the_toml(monkeypatch: pytest.MonkeyPatch, db: Any,
                                                                  database_url: str, redis_url: str,
                                                                  tmp_path: Path) -> None:
    """The services' HTTP runtime takes the plugin's defaults; a TOML entry for one of its namespaces
    replaces that one whole (unset keys take RateLimit's defaults, not the plugin's) and leaves the other."""
    use_plugins(monkeypatch, "LimitedHandler")
    toml = tmp_path / "batcher.toml"
    toml.write_text('[rate_limits."limited:search:"]\ninterval_ms = 1000\nmax_in_interval = 2\n')
    configured = load_settings({}, config_path=toml).rate_limits
    assert configured == {"limited:search:": RateLimit(interval_ms=1_000, max_in_interval=2)}
    async with test_services(test_settings(database_url, redis_url, rate_limits=configured)) as services:
        assert services.http is not None
        limits = services.http.rate_limits
    assert limits["limited:api:"] == API
    assert limits["limited:search:"] == RateLimit(interval_ms=1_000, max_in_interval=2)
    assert limits["limited:search:"].quota_pause_ms == 0 and limits["limited:search:"].burst == 1


def test_two_handlers_declaring_one_namespace_differently_stop_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin whose default for a built-in's namespace differs is a ConfigError naming the namespace,
    both handlers and both limits."""
    use_plugins(monkeypatch, "ClashingHandler")
    with pytest.raises(ConfigError) as raised:
        load_registry()
    message = str(raised.value)
    assert "default rate limit for namespace 'github:api:' declared differently" in message
    assert "handlers.tracked_apps.TrackedAppsHandler (job type 'tracked-apps-check')" in message
    assert "tests.plugins.limited.ClashingHandler (job type 'clashing-plugin')" in message
    assert "max_in_interval=5000" in message and "max_in_interval=1000" in message


def test_handlers_may_declare_one_namespace_with_equal_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Equal declarations agree (as docker-hub-pull and tracked-apps-check do for ``dockerhub:api:``)."""
    use_plugins(monkeypatch, "AgreeingHandler")
    assert handler_rate_limits(load_registry())["github:api:"].max_in_interval == 5000


def test_a_default_that_is_not_a_rate_limit_is_refused() -> None:
    """``default_rate_limits`` values must be ``batcher.RateLimit`` (a plain dict is refused, named)."""
    with pytest.raises(ConfigError, match=r"default_rate_limits\['limited:api:'\] is a dict, not a batcher.RateLimit"):
        check_handler(MalformedHandler, "malformed")


def namespace_mentions(source: str, namespaces: set[str]) -> list[tuple[int, str]]:
    """(line, text) of each string constant that contains one of ``namespaces`` (docstrings included:
    a namespace in batcher/'s prose is as much a provider name as one in its code)."""
    return [(node.lineno, node.value[:60]) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and any(ns in node.value for ns in namespaces)]


def test_no_module_of_batcher_names_a_handlers_namespace() -> None:
    """The namespaces the handlers declare appear nowhere in batcher/ (outside the fake servers)."""
    namespaces = set(handler_rate_limits(load_registry()))
    assert "hubspot:api:" in namespaces
    offenders = {str(p.relative_to(ROOT)): hits for p in runtime_modules()
                 if (hits := namespace_mentions(p.read_text(encoding="utf-8"), namespaces))}
    assert offenders == {}, f"provider namespaces in batcher/ (move them to their handler): {offenders}"
