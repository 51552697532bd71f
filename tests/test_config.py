"""Config: defaults < refstore.toml < REFSTORE_* env < flags, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from refstore.config import load_config, render_toml
from refstore.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf" / "refstore.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[dataset]\nconcat_dim = "time"\n[source]\nurl = "in/*.nc"\n')
    c = load_config(path, environ={})
    assert c.source_url == str(tmp_path / "conf" / "in" / "*.nc")
    assert c.repo == str(tmp_path / "conf" / "state" / "repo")
    assert c.ledger == str(tmp_path / "conf" / "state" / "ledger.db")
    assert c.export == str(tmp_path / "conf" / "state" / "export" / "refs.parquet")
    assert c.loadable_variables is None and c.drop_variables == ()


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[dataset]\nconcat_dim = "time"\n[source]\nurl = "a"\n[store]\nrepo = "r1"\n'
        "[sync]\nbatch_size = 10\n",
    )
    env = {"REFSTORE_STORE_REPO": "/env/repo", "REFSTORE_SYNC_BATCH_SIZE": "20"}
    c = load_config(path, environ=env)
    assert c.repo == "/env/repo" and c.batch_size == 20
    c = load_config(path, environ=env, overrides={"batch_size": 30, "repo": None})
    assert c.batch_size == 30 and c.repo == "/env/repo"


def test_remote_urls_are_left_alone(tmp_path: Path) -> None:
    path = write(tmp_path, '[dataset]\nconcat_dim = "t"\n[source]\nurl = "s3://b/p/"\n')
    assert load_config(path, environ={}).source_url == "s3://b/p/"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[dataset]\nconcat_dim = "time"\nconcat = 1\n', "unknown key 'concat' in \\[dataset\\]"),
        ("[sources]\nurl = 'x'\n", "unknown section \\[sources\\]"),
        ('[dataset]\nconcat_dim = 3\n[source]\nurl = "x"\n', "concat_dim must be str"),
        ('[source]\nurl = "x"\n', "concat_dim is required"),
        ('[dataset]\nconcat_dim = "time"\n', "url is required"),
        (
            '[dataset]\nconcat_dim = "time"\n[source]\nurl = "x"\n[sync]\nexecutor = "gpu"\n',
            "executor must be one of",
        ),
        ("[dataset\n", "not valid TOML"),
    ],
)
def test_invalid_config_names_the_problem(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        load_config(write(tmp_path, text), environ={})
    assert info.value.hint and info.value.exit_code == 2


def test_missing_file_hints_at_init(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No configuration file") as info:
        load_config(tmp_path / "nope.toml", environ={})
    assert "refstore init" in info.value.hint


def test_render_toml_round_trips(tmp_path: Path) -> None:
    text = render_toml(
        source_url="in/*.nc",
        concat_dim="t",
        loadable_variables=("a", "b"),
        drop_variables=("x",),
        group="g/h",
    )
    c = load_config(write(tmp_path, text), environ={})
    assert (c.concat_dim, c.loadable_variables, c.drop_variables, c.group) == (
        "t",
        ("a", "b"),
        ("x",),
        "g/h",
    )
