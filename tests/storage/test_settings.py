"""``[storage]`` settings of the S3 backend: validation, the secret from a file, never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacs import config


def _load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> config.Settings:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return config.load(path, env=env or {})


def test_s3_backend_settings(tmp_path: Path) -> None:
    """Flat ``s3_*`` keys; the secret from ``PACS_STORAGE_S3_SECRET_KEY`` or a file; not in repr."""
    (tmp_path / "secret").write_text("s3cr3t-value\n", encoding="utf-8")
    s = _load(
        tmp_path,
        '[storage]\nbackend = "s3"\ns3_bucket = "pacs"\ns3_endpoint = "https://s3.benhvien.vn:9000"\n'
        's3_access_key = "AK"\ns3_secret_key_file = "secret"\n',
    )
    assert s.storage.s3_secret() == "s3cr3t-value"
    env = {"PACS_STORAGE_S3_SECRET_KEY": "from-env", "PACS_STORAGE_S3_READ_TIMEOUT": "7.5"}
    s2 = _load(tmp_path, '[storage]\nbackend = "s3"\ns3_bucket = "b"\ns3_access_key = "AK"\n', env)
    assert s2.storage.s3_secret() == "from-env" and s2.storage.s3_read_timeout == 7.5
    assert "from-env" not in repr(s2) and "s3cr3t" not in repr(s)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('backend = "ftp"', "backend"),
        ('backend = "s3"', "s3_bucket"),
        ('s3_bucket = "b"\ns3_endpoint = "s3.example.com"', "s3_endpoint"),
        ('s3_bucket = "b"\ns3_access_key = "AK"', "go together"),
        ('s3_bucket = "b"\ns3_ca_file = "nowhere.pem"', "no such file"),
        ('s3_bucket = "b"\ns3_read_timeout = 0', "positive"),
        ('s3_bucket = "b"\ns3_retry_initial_seconds = 5\ns3_retry_max_seconds = 1', "at least"),
    ],
)
def test_invalid_s3_settings(tmp_path: Path, text: str, error: str) -> None:
    """Each mistake is refused at start-up with the key named."""
    with pytest.raises(config.ConfigError, match=error):
        _load(tmp_path, f"[storage]\n{text}\n")
