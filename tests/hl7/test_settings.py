"""[hl7] settings: defaults, TOML, environment, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs import config


def test_defaults_are_off() -> None:
    s = config.load(path=None, env={})
    assert s.hl7.port == 0 and s.hl7.host == "127.0.0.1" and s.hl7.allowed_hosts == ()


def test_toml_and_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[hl7]\nport = 2575\nmax_message_kb = 64\nallowed_hosts = ["10.1.0.0/16"]\n')
    s = config.load(cfg, env={"PACS_HL7_IDLE_TIMEOUT_SECONDS": "5", "PACS_HL7_ALLOWED_HOSTS": '["10.2.3.4"]'})
    assert (s.hl7.port, s.hl7.max_message_kb, s.hl7.idle_timeout_seconds) == (2575, 64, 5.0)
    assert s.hl7.allowed_hosts == ("10.2.3.4",)


@pytest.mark.parametrize(
    "body",
    [
        "port = 70000",
        "max_message_kb = 0",
        'allowed_hosts = ["his.example"]',
        "idle_timeout_seconds = 0",
        "bogus = 1",
    ],
)
def test_invalid(tmp_path: Path, body: str) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"[hl7]\n{body}\n")
    with pytest.raises(config.ConfigError):
        config.load(cfg, env={})
