"""Settings that matter on a slow CI machine, resolved in one place with one precedence.

marker > command line > ``STOREHARNESS_*`` environment > ini (pytest's ini file:
``[tool.pytest.ini_options]`` in pyproject.toml, ``[pytest]`` in pytest.ini or tox.ini) >
default — pytest-timeout's order.  The pytest plugin and the command line both come through
:func:`resolve`, and a bad value names where it came from::

    STOREHARNESS_TIME_SCALE='fast' (environment): not a number; give a number > 0
    @pytest.mark.storeharness(time_scale=0): give a finite number > 0

===============  ===================  ============================  ==========================
setting          command line         environment                   ini
===============  ===================  ============================  ==========================
stores           ``--store`` (rep.)   ``STOREHARNESS_STORES`` (a,b)  ``storeharness_stores``
seed             ``--harness-seed``   ``STOREHARNESS_SEED``          ``storeharness_seed``
time_scale       ``--time-scale``     ``STOREHARNESS_TIME_SCALE``    ``storeharness_time_scale``
hosts            ``--hosts``          ``STOREHARNESS_HOSTS``         ``storeharness_hosts``
===============  ===================  ============================  ==========================

``hosts`` runs worlds across hosts: ``netns:N`` (namespaces built here), ``local``,
``ssh:h1,h2`` or a ``hosts.toml`` (see :mod:`.hosts.inventory`).

``time_scale`` multiplies every time limit (a world's, a rank's budget, each store operation's
timeout): ``STOREHARNESS_TIME_SCALE=3`` on a machine three times slower.  The marker is
``@pytest.mark.storeharness(time_scale=..., seed=...)``; stores have their own marker,
``@pytest.mark.stores(...)``.
"""

from __future__ import annotations

import configparser
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ENV", "INI", "SettingError", "Settings", "ini_file_values", "resolve"]


class SettingError(ValueError):
    """A setting's value is wrong; the message names where it came from."""


@dataclass(frozen=True)
class Settings:
    """Resolved settings (see the module docstring)."""

    stores: tuple[str, ...] | None = None  # None: the caller's default
    seed: int | None = None  # None: a stable seed per case
    time_scale: float = 1.0
    hosts: str | None = None  # a --hosts value; None: every world on this machine

    def scale(self, seconds: float | None) -> float | None:
        """``seconds`` times :attr:`time_scale` (``None`` stays ``None``)."""
        return None if seconds is None else seconds * self.time_scale


def _stores(raw: Any) -> tuple[str, ...]:
    # One spelling for every source: names separated by commas and/or whitespace (a line each
    # in an ini file, as pytest's "args" ini type reads it), or a list of them.
    items = [raw] if isinstance(raw, str) else list(raw)
    names = tuple(n for item in items for n in str(item).replace(",", " ").split())
    if not names:
        raise ValueError("no store named; give one or more names, comma-separated")
    return names


def _seed(raw: Any) -> int:
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise ValueError("not an integer") from None


def _scale(raw: Any) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError("not a number; give a number > 0") from None
    if not value > 0 or value == float("inf"):
        raise ValueError("give a finite number > 0")
    return value


def _hosts(raw: Any) -> str:
    from .hosts.inventory import InventoryError, parse_hosts

    spec = str(raw).strip()
    if spec.startswith("netns:"):  # checked without building anything
        count = spec[6:]
        if not count.isdigit() or not 1 <= int(count) <= 64:
            raise ValueError("expected netns:N with N a number of hosts 1..64")
        return spec
    try:
        parse_hosts(spec)
    except InventoryError as exc:
        raise ValueError(str(exc)) from None
    return spec


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "stores": _stores,
    "seed": _seed,
    "time_scale": _scale,
    "hosts": _hosts,
}
ENV = {name: f"STOREHARNESS_{name.upper()}" for name in _PARSERS}
INI = {name: f"storeharness_{name}" for name in _PARSERS}


def resolve(
    *,
    marker: Mapping[str, Any] | None = None,
    cli: Mapping[str, tuple[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
    ini: Mapping[str, tuple[str, Any]] | None = None,
) -> Settings:
    """Resolve every setting from the first source that gives it.

    ``cli`` and ``ini`` map a setting to ``(how it was spelled, value)`` so errors can name
    it; ``env`` defaults to ``os.environ``.  Raises :class:`SettingError`.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for name, parse in _PARSERS.items():
        for spelled, where, raw in _candidates(name, marker or {}, cli or {}, env, ini or {}):
            if raw is None or raw == "" or raw == []:
                continue
            try:
                values[name] = parse(raw)
            except ValueError as exc:
                given = f"{spelled}={raw!r})" if where == "marker" else f"{spelled}={raw!r}"
                source = "" if where == "marker" else f" ({where})"
                raise SettingError(f"{given}{source}: {exc}") from None
            break
    return Settings(**values)


def _candidates(
    name: str,
    marker: Mapping[str, Any],
    cli: Mapping[str, tuple[str, Any]],
    env: Mapping[str, str],
    ini: Mapping[str, tuple[str, Any]],
) -> Sequence[tuple[str, str, Any]]:
    """``(how it is spelled, where it came from, raw value)`` in order of precedence."""
    out: list[tuple[str, str, Any]] = []
    if name in marker:
        out.append((f"@pytest.mark.storeharness({name}", "marker", marker[name]))
    if name in cli:
        flag, raw = cli[name]
        out.append((flag, "command line", raw))
    out.append((ENV[name], "environment", env.get(ENV[name])))
    if name in ini:
        where, raw = ini[name]
        out.append((INI[name], where, raw))
    return out


def ini_file_values(start: Path | None = None) -> dict[str, tuple[str, Any]]:
    """The ``storeharness_*`` ini values of the pytest ini file at or above ``start``.

    For the command line, which has no pytest config: it reads what pytest would read, in
    pytest's order (pytest.ini, pyproject.toml's ``[tool.pytest.ini_options]``, tox.ini).
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        for file in ("pytest.ini", "pyproject.toml", "tox.ini"):
            path = folder / file
            if not path.is_file():
                continue
            table = _ini_table(path)
            if table is None:
                continue
            return {name: (str(path), table[INI[name]]) for name in _PARSERS if INI[name] in table}
    return {}


def _ini_table(path: Path) -> Mapping[str, Any] | None:
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError):
            return None
        table = data.get("tool", {}).get("pytest", {}).get("ini_options")
        return table if isinstance(table, dict) else None
    parser = configparser.ConfigParser()
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error:
        return None
    section = "pytest" if path.name != "setup.cfg" else "tool:pytest"
    if not parser.has_section(section) and path.name == "tox.ini":
        return None
    if not parser.has_section(section):
        return {} if path.name == "pytest.ini" else None
    return dict(parser.items(section))
