"""Property tests of configuration input: the TOML file, the environment, job entries and handler params.

Whatever the file, the environment or an API edit holds, loading and validating it ends in a Settings /
JobSpec / Params object or a :class:`ConfigError` naming the job and key that are wrong — never another
exception (which would be a traceback at start-up instead of exit 2 with a message).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from batcher.errors import ConfigError
from batcher.jobs import JobSpec, parse_job, parse_jobs, validate_params
from batcher.registry import load_registry
from batcher.settings import ENV_NAMES, Settings, fold_job_env_aliases, load_settings
from tests.properties.strategies import FAST, NASTY_TEXT, keyed_dicts, text, toml_document, toml_values

REGISTRY = load_registry()
JOB_KEYS = sorted(JobSpec.model_fields)
SECTION_KEYS = {section: sorted(Settings.model_fields[section].annotation.model_fields)  # type: ignore[union-attr]
                for section in ("database", "redis", "mongo", "daemon", "api", "log")}


def _job_entries() -> st.SearchStrategy[dict[str, Any]]:
    """Job entries: a registered (or bogus) type, known and unknown keys with arbitrary values, and params
    shaped after that type's Params model."""
    def entry(job_type: str, rest: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        return {**rest, "type": job_type, "params": params}

    types = st.one_of(st.sampled_from(sorted(REGISTRY)), text)
    return types.flatmap(lambda t: st.builds(
        entry, st.just(t), keyed_dicts(JOB_KEYS),
        keyed_dicts(sorted(REGISTRY[t].Params.model_fields) if t in REGISTRY else ["x"])))


def _printable(exc: ConfigError) -> None:
    """The CLI prints the message as one line on stderr: it must be valid UTF-8 (a lone surrogate from
    the input, unescaped, would make the print itself fail)."""
    str(exc).encode("utf-8")


def _assert_names_the_job(exc: ConfigError, job: str) -> None:
    assert exc.job == job, exc
    assert exc.reason and exc.key is not None, f"the error names no key: {exc}"
    _printable(exc)


@FAST
@given(name=text.filter(bool), entry=st.one_of(_job_entries(), keyed_dicts(JOB_KEYS)))
@example(name="j", entry={"type": "synthetic", "cron": "0 0 30 2 *"})
@example(name="j", entry={"type": "synthetic", "timezone": "\x00"})
@example(name="j", entry={"type": "synthetic", "cron": "* * * * *", "interval_minutes": 5})
@example(name="j", entry={"type": "datasync", "params": {"base_url": "http://x", "api_key": "literal"}})
@example(name=" ", entry={"type": "synthetic", "\ud800": 1})  # found: a key not valid Unicode named no key
@example(name=" ", entry={"type": "synthetic", "": 1})  # found: an empty key was "unknown key" naming no key
def test_a_job_entry_is_valid_or_a_config_error_naming_job_and_key(name: str, entry: dict[str, Any]) -> None:
    """parse_job on any entry: a JobSpec, or a ConfigError naming the job and the offending key."""
    try:
        spec = parse_job(name, entry, REGISTRY, file="batcher.toml")
    except ConfigError as exc:
        _assert_names_the_job(exc, name)
        return
    assert spec.type in REGISTRY


def _handler_params() -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    return st.sampled_from(sorted(REGISTRY)).flatmap(
        lambda t: st.tuples(st.just(t), keyed_dicts(sorted(REGISTRY[t].Params.model_fields))))


@FAST
@given(case=_handler_params())
@example(case=("synthetic", {"": 1}))
@example(case=("synthetic", {"token_env": ""}))
@example(case=("datasync", {"api_key_env": 5}))
@example(case=("gsc", {"sites": "\x00", "start": "2025-02-30"}))
def test_handler_params_are_valid_or_a_config_error_naming_the_param(case: tuple[str, dict[str, Any]]) -> None:
    """Every registered handler's params: arbitrary values for its own keys, ``*_env`` references and
    unknown keys validate, or raise a ConfigError whose key is ``params.<the key>``."""
    job_type, params = case
    try:
        validate_params(REGISTRY[job_type], params, job="j")
    except ConfigError as exc:
        _assert_names_the_job(exc, "j")
        assert exc.key is not None and exc.key.startswith("params"), exc


def _write(path: Path, document: str) -> None:
    path.write_bytes(document.encode("utf-8", "surrogatepass"))  # lone surrogates: a file that is not UTF-8


@pytest.fixture(scope="module")
def toml_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("toml") / "batcher.toml"


def _documents() -> st.SearchStrategy[dict[str, Any]]:
    sections = {name: keyed_dicts(keys) for name, keys in SECTION_KEYS.items()}
    jobs = st.dictionaries(text, st.one_of(_job_entries(), toml_values), max_size=3)
    rate_limits = st.dictionaries(text, st.one_of(keyed_dicts(["interval_ms", "max_in_interval", "burst",
                                                               "min_spacing_ms", "max_attempts"]), toml_values),
                                  max_size=2)
    return st.fixed_dictionaries({}, optional={**sections, "jobs": jobs, "rate_limits": rate_limits,
                                               "extra": toml_values})


@FAST
@given(document=_documents())
@example(document={"jobs": {"j": {"type": "synthetic", "params": {"token": "\ud800"}}}})
@example(document={"daemon": {"queues": [1, 2]}, "api": {"token": "t"}})
def test_a_toml_file_loads_or_is_a_config_error(toml_path: Path, document: dict[str, Any]) -> None:
    """load_settings + parse_jobs on any TOML file (including one that is not UTF-8): Settings and
    JobSpecs, or a ConfigError naming the file."""
    _write(toml_path, toml_document(document))
    try:
        settings = load_settings({}, config_path=toml_path)
        parse_jobs(settings.jobs, REGISTRY, file=str(toml_path))
    except ConfigError as exc:
        assert exc.file == str(toml_path), exc
        assert exc.reason
        _printable(exc)


ENV_VALUES = st.one_of(st.sampled_from(NASTY_TEXT), st.text(max_size=20), st.integers().map(str),
                       st.floats().map(str))


@FAST
@given(environ=st.dictionaries(st.sampled_from([n for names in ENV_NAMES.values() for n in names]
                                               + ["ENABLE_USAGE_AGGREGATION", "USAGE_AGGREGATION_INTERVAL"]),
                               ENV_VALUES.filter(lambda v: "\x00" not in v), max_size=5))
@example(environ={"USAGE_AGGREGATION_INTERVAL": "²"})
@example(environ={"BATCHER_TICK_SECONDS": "nan"})
def test_the_environment_loads_or_is_a_config_error_naming_the_variable(toml_path: Path,
                                                                        environ: dict[str, str]) -> None:
    """Any values of the flat environment names: Settings, or a ConfigError naming the variable."""
    _write(toml_path, toml_document({"jobs": {"u": {"type": "usage_aggregation"}}}))
    try:
        settings = load_settings(environ, config_path=toml_path)
    except ConfigError as exc:
        assert exc.file in environ or exc.key in environ, exc
        return
    assert math.isfinite(settings.daemon.tick_seconds)


@FAST
@given(interval=ENV_VALUES)
@example(interval="²")
@example(interval="٣٠٠٠٠")
def test_the_usage_interval_variable_is_minutes_or_a_config_error(interval: str) -> None:
    """USAGE_AGGREGATION_INTERVAL (milliseconds): 1..1440 whole minutes, or a ConfigError naming it."""
    try:
        jobs, _ = fold_job_env_aliases({"u": {"type": "usage_aggregation"}}, {"USAGE_AGGREGATION_INTERVAL": interval})
    except ConfigError as exc:
        assert exc.key == "USAGE_AGGREGATION_INTERVAL"
        return
    if interval.strip():
        assert 1 <= jobs["u"]["interval_minutes"] <= 1440
    else:
        assert "interval_minutes" not in jobs["u"]  # empty counts as unset
