"""The one masking function: every form of URL that redis-py and boto3 take keeps its secret
out of what rstream prints (tests/integration/test_api_hostile.py tries the API itself)."""

from __future__ import annotations

import pytest

from rstream.shared.masking import mask_text, mask_url, secrets_in

SECRET = "pa@ss:w/rd-7f3a"


@pytest.mark.parametrize("url", [
    f"redis://:{SECRET}@h:6379/0", f"redis://user:{SECRET}@h:6379/0",
    f"rediss://default:{SECRET}@h:6380/0?ssl_cert_reqs=required",
    f"redis://h:6379/0?password={SECRET}", "redis://h/0?password=pa%40ss%3Aw%2Frd-7f3a",
    f"unix:///run/redis.sock?db=0&password={SECRET}", f"redis://h/0?sentinel_password={SECRET}",
    "redis://user:pa%40ss%3Aw%2Frd-7f3a@h:6379/0", f"http://AKIAX:{SECRET}@minio:9000",
    f"redis://h/0?auth_token={SECRET}&db=1"])
def test_mask_url_hides_the_password_in_every_form(url: str) -> None:
    shown = mask_url(url)
    assert "pa@ss" not in shown and "w/rd" not in shown and "pa%40ss" not in shown
    assert "****" in shown
    assert shown.split("://")[0] == url.split("://", maxsplit=1)[0]


def test_a_url_without_credentials_is_left_as_it_is() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://h:6380/1?ssl_cert_reqs=none",
                "http://minio:9000", ""):
        assert mask_url(url) == url


def test_mask_text_hides_the_password_wherever_a_library_quoted_it() -> None:
    url = f"redis://:{SECRET}@h:6379/0"
    text = f"Error connecting to {url}; AUTH {SECRET} failed for {SECRET[:6]}"
    shown = mask_text(text, url)
    assert SECRET not in shown and "redis://****@h:6379/0" in shown
    assert secrets_in("redis://bob@h/0") == [], "a user name alone is not a secret"
