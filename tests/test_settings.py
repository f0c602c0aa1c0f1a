"""Settings layering (defaults → TOML → env → flags) and config errors (exit code 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.core.errors import ConfigError
from bridge.core.settings import all_keys, describe, env_name, load_settings
from bridge.ops.cli import main


def test_defaults_follow_the_contract() -> None:
    s = load_settings(env={})
    assert s.mllp.port == 2575
    assert s.scp.port == 11112
    assert s.scp.ae_title == "MWL_BRIDGE"
    assert s.redis.url == ""
    assert s.mllp.max_frame_bytes == 1024 * 1024
    assert s.mllp.accepted_versions == ("2.3", "2.3.1", "2.4", "2.5", "2.5.1")


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[mllp]\nport = 3000\nhost = "127.0.0.1"\n[scp]\nae_title = "FILE_AE"\n')
    s = load_settings(env={}, config_file=cfg)
    assert (s.mllp.port, s.mllp.host, s.scp.ae_title) == (3000, "127.0.0.1", "FILE_AE")
    s = load_settings(env={"MWL_BRIDGE_MLLP_PORT": "3001", "AE_TITLE": "ENV_AE"}, config_file=cfg)
    assert (s.mllp.port, s.scp.ae_title) == (3001, "ENV_AE")
    s = load_settings({"mllp.port": "3002"}, env={"MWL_BRIDGE_MLLP_PORT": "3001"}, config_file=cfg)
    assert s.mllp.port == 3002
    assert s.mllp.host == "127.0.0.1"


def test_long_env_name_beats_alias() -> None:
    s = load_settings(env={"REDIS_URL": "redis://a:1/0", "MWL_BRIDGE_REDIS_URL": "redis://b:2/0"})
    assert s.redis.url == "redis://b:2/0"


def test_lists_and_tables_from_env_and_toml(tmp_path: Path) -> None:
    s = load_settings(env={env_name("scp.hide_statuses"): "COMPLETED, CANCELED"})
    assert s.scp.hide_statuses == ("COMPLETED", "CANCELED")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[worker.sender_mappings]\n"RIS|HOSP" = "site.yaml"\n')
    s = load_settings(env={}, config_file=cfg)
    assert s.worker.sender_mappings == {"RIS|HOSP": "site.yaml"}


@pytest.mark.parametrize(
    ("flags", "env", "key"),
    [
        ({"mllp.port": "70000"}, {}, "mllp.port"),
        ({"mllp.port": "abc"}, {}, "mllp.port"),
        ({}, {"DICOM_PORT": "-1"}, "scp.port"),
        ({"mllp.ack_mode": "sometimes"}, {}, "mllp.ack_mode"),
        ({"scp.ae_title": "A_TITLE_THAT_IS_TOO_LONG"}, {}, "scp.ae_title"),
        ({"redis.url": "http://x"}, {}, "redis.url"),
        ({}, {"MWL_BRIDGE_WORKER_LOCAL_TIMEZONE": "Mars/Base"}, "worker.local_timezone"),
        ({}, {"MWL_BRIDGE_MLLP_ACCEPT_MISSING_FINAL_CR": "maybe"}, "mllp.accept_missing_final_cr"),
        ({"scp.response_charset": "LATIN1"}, {}, "scp.response_charset"),
        ({"scp.response_charset_by_ae": "CT1=UTF8"}, {}, "scp.response_charset_by_ae"),
        ({"scp.response_charset": "ISO_IR 192\\ISO 2022 IR 87"}, {}, "scp.response_charset"),
        ({"scp.response_charset": "ISO 2022 IR 87\\ISO 2022 IR 149"}, {}, "scp.response_charset"),
        ({}, {"MWL_BRIDGE_SCP_UNREPRESENTABLE_TEXT": "drop"}, "scp.unrepresentable_text"),
        ({"scp.unrepresentable_text_by_ae": "CT1=maybe"}, {}, "scp.unrepresentable_text_by_ae"),
    ],
)
def test_invalid_values_name_the_key(flags, env, key) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(flags, env=env)
    assert info.value.key == key
    assert key in str(info.value)


def test_response_charset_settings_from_toml(tmp_path: Path) -> None:
    """The issue's examples load: forced sets per calling AE (a lone multi-byte ISO 2022
    term included) and the per-AE rule for text a forced set cannot represent."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        "[scp]\n"
        'unrepresentable_text = "transliterate"\n'
        "[scp.response_charset_by_ae]\n"
        'OLDCT = "ISO_IR 100"\nJPCT = "ISO 2022 IR 87"\nKRCT = "\\\\ISO 2022 IR 149"\n'
        'NEWCT = "ISO_IR 192"\n'
        '[scp.unrepresentable_text_by_ae]\nOLDCT = "skip"\n',
        encoding="utf-8",
    )
    s = load_settings(env={}, config_file=cfg)
    assert s.scp.response_charset_by_ae["KRCT"] == "\\ISO 2022 IR 149"
    assert (s.scp.unrepresentable_text, s.scp.unrepresentable_text_by_ae) == (
        "transliterate",
        {"OLDCT": "skip"},
    )


def test_invalid_charset_setting_exits_2_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MWL_BRIDGE_SCP_UNREPRESENTABLE_TEXT_BY_AE", "CT1=replace")
    assert main(["scp"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("mwl-bridge: invalid setting scp.unrepresentable_text_by_ae")


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[mllp]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"mllp\.prot: unknown setting"):
        load_settings(env={}, config_file=cfg)


def test_secrets_are_masked_in_the_description() -> None:
    s = load_settings({"redis.url": "redis://user:s3cret@host:6379/0"}, env={})
    assert "s3cret" not in str(describe(s))
    assert set(describe(s)) == set(all_keys())


@pytest.mark.parametrize(
    "argv",
    [
        ["listen", "--mllp-port", "99999"],
        ["scp", "--dicom-port", "x"],
        ["scp", "--ae-title", ""],
        ["listen", "--ack-mode", "bogus"],
    ],
)
def test_cli_exits_2_with_one_line(argv, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("mwl-bridge: invalid setting ")


def test_final_order_record_must_cover_the_dedupe_window() -> None:
    """A resend accepted after the dedupe window must still meet the final record."""
    with pytest.raises(ConfigError) as info:
        load_settings(
            {"worker.final_order_retention_s": 3600, "mllp.dedupe_retention_s": 7200}, env={}
        )
    assert info.value.key == "worker.final_order_retention_s"
    s = load_settings(
        {"worker.final_order_retention_s": 7200, "mllp.dedupe_retention_s": 7200}, env={}
    )
    assert s.worker.final_order_retention_s == 7200
    with pytest.raises(ConfigError):  # the default dedupe window is a week
        load_settings({"worker.final_order_retention_s": 7200}, env={})


def test_worker_default_charset_is_deprecated_unless_equal() -> None:
    """One default for both stages (issue #11): today mllp.default_charset 8859/1 with
    worker.default_charset UNICODE UTF-8 started fine, the listener checked Latin-1 and
    the worker decoded UTF-8."""
    with pytest.raises(ConfigError) as info:
        load_settings({"worker.default_charset": "UNICODE UTF-8"}, env={})
    assert info.value.key == "worker.default_charset"
    assert "mllp.default_charset" in str(info.value) and "deprecated" in str(info.value)
    for same in ("", "8859/1", " 8859/1 "):
        assert load_settings({"worker.default_charset": same}, env={}).mllp.default_charset
    s = load_settings(
        {"worker.default_charset": "unicode utf-8", "mllp.default_charset": "UNICODE UTF-8"},
        env={},
    )
    assert s.mllp.default_charset == "UNICODE UTF-8"


@pytest.mark.parametrize(
    ("env", "key", "words"),
    [
        ({"MWL_BRIDGE_MLLP_DEFAULT_CHARSET": "KLINGON"}, "mllp.default_charset", "unknown"),
        ({"MWL_BRIDGE_MLLP_DEFAULT_CHARSET": "UTF-16"}, "mllp.default_charset", "MLLP"),
        ({"MWL_BRIDGE_MLLP_SENDER_CHARSETS": "RIS|HOSP=UTF-32"}, "mllp.sender_charsets", "MLLP"),
        ({"MWL_BRIDGE_MLLP_SENDER_CHARSETS": "=8859/1"}, "mllp.sender_charsets", "MSH3"),
        ({"MWL_BRIDGE_WORKER_DEFAULT_CHARSET": "8859/2"}, "worker.default_charset", "mllp"),
    ],
)
def test_cli_exits_2_on_a_charset_setting_neither_stage_decodes(
    env: dict[str, str], key: str, words: str, capsys, monkeypatch
) -> None:
    """Today an unknown mllp.default_charset started, and every message without MSH-18
    was refused (or, worker side, dead-lettered)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["worklist", "list", "--redis-url", "redis://127.0.0.1:1/0"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"mwl-bridge: invalid setting {key}: ") and words in line


def test_sender_charsets_from_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[mllp.sender_charsets]\n"RIS|TOKYO" = "~ISO IR87"\nKOREA = "KS X 1001"\n')
    s = load_settings(env={}, config_file=cfg)
    assert s.mllp.sender_charsets == {"RIS|TOKYO": "~ISO IR87", "KOREA": "KS X 1001"}
