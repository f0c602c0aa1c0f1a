"""The documented example configuration cannot drift; precedence and errors via the CLI."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bridge.core.config_file import example, render
from bridge.core.settings import Settings, all_keys, describe, env_name, load_settings
from bridge.ops.cli import main

EXAMPLE = Path(__file__).parent.parent / "docs" / "mwl-bridge.example.toml"


def test_example_file_is_generated_from_the_defaults() -> None:
    assert EXAMPLE.read_text() == example(), (
        "docs/mwl-bridge.example.toml is stale: run "
        "`python -m bridge.core.config_file > docs/mwl-bridge.example.toml`"
    )


def test_example_lists_every_key_with_its_default() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    keys = [f"{section}.{name}" for section, table in data.items() for name in table]
    assert keys == all_keys()
    assert load_settings(env={}, config_file=EXAMPLE) == Settings()
    text = EXAMPLE.read_text()
    for key in all_keys():
        assert f"# env: {env_name(key)}" in text


def test_render_round_trips_non_default_settings(tmp_path: Path) -> None:
    s = load_settings(
        {
            "redis.url": 'redis://user:pa"ss@h:1/0',
            "scp.ae_title": 'ÄE"1',
            "scp.allowed_calling_aes": "CT1,MR1",
            "worker.sender_mappings": "RIS|HOSP=site a.yaml,LAB=b.yaml",
            "mllp.idle_timeout_s": "1.5",
            "mllp.enhanced_mode": "false",
        },
        env={},
    )
    path = tmp_path / "s.toml"
    path.write_text(render(s))
    assert load_settings(env={}, config_file=path) == s
    assert describe(load_settings(env={}, config_file=path)) == describe(s)


def test_precedence_file_env_flag_through_the_cli(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from redis_server import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"
    cfg = tmp_path / "c.toml"
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("MWL_BRIDGE_REDIS_URL", raising=False)

    cfg.write_text(f'[redis]\nurl = "{redis_url}"\nsocket_timeout_s = 0.3\n')
    assert main(["worklist", "list", "--config", str(cfg)]) == 0  # file alone

    monkeypatch.setenv("MWL_BRIDGE_REDIS_URL", dead)  # env beats file
    assert main(["worklist", "list", "--config", str(cfg)]) == 1
    assert "worklist query failed" in capsys.readouterr().err

    assert main(["worklist", "list", "--config", str(cfg), "--redis-url", redis_url]) == 0
    monkeypatch.setenv("MWL_BRIDGE_CONFIG", str(cfg))  # file named by the environment
    monkeypatch.delenv("MWL_BRIDGE_REDIS_URL")
    assert main(["worklist", "list"]) == 0


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "invalid setting config: file"),
        ("[redis\n", "is not valid TOML"),
        ('[redis]\nsocket_timeout_s = "soon"\n', "invalid setting redis.socket_timeout_s"),
        ('[obs]\nlog_level = "LOUD"\n', "invalid setting obs.log_level: 'LOUD' is not one of"),
        ("[nope]\nx = 1\n", "invalid setting nope: unknown section"),
    ],
)
def test_config_file_errors_exit_2_with_one_line(tmp_path: Path, capsys, content, needle) -> None:
    cfg = tmp_path / "c.toml"
    if content is not None:
        cfg.write_text(content)
    assert main(["status", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
