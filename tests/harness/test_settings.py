"""Settings: one precedence (marker > command line > environment > ini), errors name the source."""

from __future__ import annotations

from pathlib import Path

import pytest

from storeharness.harness._settings import SettingError, Settings, ini_file_values, resolve


def test_the_first_source_that_gives_a_setting_wins() -> None:
    env = {"STOREHARNESS_TIME_SCALE": "3", "STOREHARNESS_SEED": "9", "STOREHARNESS_STORES": "a,b"}
    ini = {"time_scale": ("pytest.ini", "5"), "seed": ("pytest.ini", "1")}
    assert resolve(env=env, ini=ini) == Settings(("a", "b"), 9, 3.0)
    cli = {"time_scale": ("--time-scale", "2"), "stores": ("--store", ["tcp"])}
    assert resolve(cli=cli, env=env, ini=ini) == Settings(("tcp",), 9, 2.0)
    marker = {"time_scale": 4}
    assert resolve(marker=marker, cli=cli, env=env, ini=ini).time_scale == 4.0
    assert resolve(env={}, ini={"seed": ("pytest.ini", "1")}) == Settings(None, 1, 1.0)
    assert resolve(env={}) == Settings()
    assert Settings(time_scale=2.5).scale(2) == 5.0 and Settings().scale(None) is None


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (
            {"env": {"STOREHARNESS_TIME_SCALE": "0"}},
            "STOREHARNESS_TIME_SCALE='0' \\(environment\\)",
        ),
        ({"cli": {"seed": ("--seed", "x")}}, "--seed='x' \\(command line\\): not an integer"),
        (
            {"marker": {"time_scale": -1}},
            r"@pytest.mark.storeharness\(time_scale=-1\): give a finite",
        ),
        (
            {"ini": {"time_scale": ("tox.ini", "inf")}},
            "storeharness_time_scale='inf' \\(tox.ini\\)",
        ),
        ({"env": {"STOREHARNESS_STORES": " , "}}, "no store named"),
    ],
)
def test_a_bad_value_names_where_it_came_from(where: dict[str, object], message: str) -> None:
    where.setdefault("env", {})
    with pytest.raises(SettingError, match=message):
        resolve(**where)  # type: ignore[arg-type]


def test_the_command_line_reads_pytests_ini_file(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        "[tool.pytest.ini_options]\nstoreharness_time_scale = '2.5'\n"
    )
    deeper = tmp_path / "a" / "b"
    deeper.mkdir(parents=True)
    found = ini_file_values(deeper)
    assert found == {"time_scale": (str(tmp_path / "pyproject.toml"), "2.5")}
    assert resolve(env={}, ini=found).time_scale == 2.5
    (deeper / "pytest.ini").write_text("[pytest]\nstoreharness_seed = 7\n")
    assert ini_file_values(deeper) == {"seed": (str(deeper / "pytest.ini"), "7")}


def test_stores_read_the_same_from_every_source() -> None:
    for raw in ("tcp,file", "tcp file", "tcp\nfile", ["tcp", "file"], " tcp , file "):
        assert resolve(env={}, ini={"stores": ("pytest.ini", raw)}).stores == ("tcp", "file")
