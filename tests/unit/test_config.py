"""Settings: defaults, file, environment, overrides, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs.config import AllowedAE, ConfigError, load

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_loads_with_documented_defaults() -> None:
    s = load(ROOT / "config.toml", env={})
    assert (s.dicom.ae_title, s.dicom.port, s.http.port) == ("PACS", 11112, 8042)
    assert s.storage.path == (ROOT / "storage").resolve()
    assert s.database_url == f"sqlite:///{(ROOT / 'storage' / 'index.sqlite').resolve()}"
    assert AllowedAE("STORESCU", "127.0.0.1") in s.dicom.allowed_aes
    assert (s.http.workers, s.dicom.workers) == (1, 0)


def test_environment_overrides_single_keys(tmp_path: Path) -> None:
    env = {
        "PACS_DICOM_PORT": "11113",
        "PACS_DATABASE_URL": "postgresql://u@h/db",
        "PACS_DICOM_ALLOWED_AES": '[{"ae_title": "CT1", "host": "10.0.0.5"}, "MR1"]',
        "PACS_STORAGE_FSYNC": "false",
    }
    s = load(ROOT / "config.toml", env=env)
    assert s.dicom.port == 11113
    assert s.database_url == "postgresql://u@h/db"
    assert s.dicom.allowed_aes == (AllowedAE("CT1", "10.0.0.5"), AllowedAE("MR1"))
    assert s.storage.fsync is False


@pytest.mark.parametrize(
    "text",
    [
        "[dicom]\nport = 'x'\n",
        "[dicom]\nnonsense = 1\n",
        "[nosuchsection]\n",
        "[dicom]\nae_title = 'WAY_TOO_LONG_AE_TITLE'\n",
        "[storage]\nduplicate_policy = 'overwrite-silently'\n",
        "[http]\nworkers = -1\n",
        "not toml at all [",
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError):
        load(p, env={})


def test_bad_env_value_is_a_clear_error() -> None:
    with pytest.raises(ConfigError):
        load(ROOT / "config.toml", env={"PACS_STORAGE_FSYNC": "maybe"})
