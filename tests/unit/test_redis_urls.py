"""RSTREAM_REDIS_URL's Sentinel form: one reader, clear errors naming the part, the same Redis
for the job store (redis-py) and the broker (kombu's sentinel:// form).

tests/integration/test_sentinel_failover.py runs a job over a real Sentinel failover."""

from __future__ import annotations

import ssl

import pytest
from kombu import Connection
from redis.sentinel import SentinelConnectionPool

from rstream.shared.connections import (
    broker,
    is_sentinel,
    parse_sentinel_url,
    redis_client,
)
from rstream.shared.errors import ConfigError
from rstream.shared.masking import mask_url
from rstream.shared.queue.app import make_app
from tests.settings import make_settings

SECRET = "pa@ss:w/rd-7f3a"
ENCODED = "pa%40ss%3Aw%2Frd-7f3a"


def test_a_full_sentinel_url_is_read_part_by_part() -> None:
    url = (f"redis+sentinel://:{ENCODED}@s1:26379,s2:26380,[::1]/mymaster/3"
           "?sentinel_password=sp1")
    parsed = parse_sentinel_url(url)
    assert parsed.sentinels == (("s1", 26379), ("s2", 26380), ("::1", 26379))
    assert (parsed.master, parsed.db, parsed.password) == ("mymaster", 3, SECRET)
    assert (parsed.sentinel_password, parsed.username, parsed.tls) == ("sp1", None, False)
    assert parsed.server_kwargs() == {"db": 3, "password": SECRET}
    assert parsed.sentinel_kwargs() == {"password": "sp1"}


def test_the_database_defaults_to_0_and_the_port_to_sentinels_own() -> None:
    parsed = parse_sentinel_url("redis+sentinel://10.0.0.5/primary")
    assert (parsed.sentinels, parsed.master, parsed.db) == ((("10.0.0.5", 26379),), "primary", 0)
    assert parsed.password is None and parsed.sentinel_kwargs() == {}


def test_tls_sentinel_urls_take_the_ssl_parameters_of_rediss() -> None:
    parsed = parse_sentinel_url("rediss+sentinel://user:pw@s1:26379/m/1"
                                "?ssl_cert_reqs=none&ssl_ca_certs=/etc/ca.pem")
    assert parsed.tls and parsed.username == "user"
    assert parsed.ssl == {"ssl_cert_reqs": ssl.CERT_NONE, "ssl_ca_certs": "/etc/ca.pem"}
    assert parsed.server_kwargs()["ssl"] is True
    assert parsed.sentinel_kwargs()["ssl_ca_certs"] == "/etc/ca.pem"
    verified = parse_sentinel_url("rediss+sentinel://s1/m")
    assert verified.ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}, "certificates checked by default"


@pytest.mark.parametrize(("url", "part"), [
    ("redis+sentinel:///mymaster", "no Sentinel address"),
    ("redis+sentinel://s1:26379", "no master name"),
    ("redis+sentinel://s1:26379/", "no master name"),
    ("redis+sentinel://s1:notaport/m", "'s1:notaport' is not HOST[:PORT]"),
    ("redis+sentinel://s1:70000/m", "port 70000"),
    ("redis+sentinel://s1,,s2/m", "'' is not HOST[:PORT]"),
    ("redis+sentinel://s1/my*master", "master name 'my*master'"),
    ("redis+sentinel://s1/m/zero", "database 'zero'"),
    ("redis+sentinel://s1/m?master=x", "unknown parameter 'master'"),
    ("redis+sentinel://s1/m?ssl_cert_reqs=none", "need rediss+sentinel://"),
    ("rediss+sentinel://s1/m?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
    (f"redis+sentinel://{ENCODED}@s1/m", "before @ must be :PASSWORD"),
])
def test_a_bad_sentinel_url_names_the_part_that_is_wrong(url: str, part: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_sentinel_url(url)
    assert part in str(caught.value)
    assert "pa@ss" not in str(caught.value) and ENCODED not in str(caught.value)


def test_settings_refuse_a_bad_sentinel_url_without_showing_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        make_settings(redis_url=f"redis+sentinel://:{ENCODED}@s1:1/")
    text = str(caught.value)
    assert "RSTREAM_REDIS_URL" in text and "no master name" in text
    assert ENCODED not in text and "redis+sentinel://HOST:PORT" in text
    good = make_settings(redis_url=f"redis+sentinel://:{ENCODED}@s1:1,s2:2/m/0")
    assert good.redis_url.startswith("redis+sentinel://")


def test_the_password_of_a_sentinel_url_is_masked() -> None:
    shown = mask_url(f"redis+sentinel://:{ENCODED}@s1:1,s2:2/m/0?sentinel_password=sp-secret")
    assert ENCODED not in shown and "sp-secret" not in shown and "s1:1,s2:2/m/0" in shown


def test_is_sentinel_tells_the_forms_apart() -> None:
    assert is_sentinel("redis+sentinel://s/m") and is_sentinel("rediss+sentinel://s/m")
    assert not is_sentinel("redis://127.0.0.1:6379/0") and not is_sentinel("unix:///r.sock")


def test_the_client_asks_the_sentinels_for_the_named_master() -> None:
    client = redis_client(f"redis+sentinel://:{ENCODED}@s1:1,s2:2/mymaster/4"
                          "?sentinel_password=sp1", socket_timeout=3)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 4 and pool.connection_kwargs["password"] == SECRET
    assert pool.connection_kwargs["socket_timeout"] == 3
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [1, 2]
    assert sentinels[0].connection_pool.connection_kwargs["password"] == "sp1"
    assert sentinels[0].connection_pool.connection_kwargs["socket_timeout"] == 3


def test_a_plain_url_is_left_to_redis_py() -> None:
    client = redis_client("redis://127.0.0.1:6399/2")
    assert client.connection_pool.connection_kwargs["port"] == 6399
    assert broker("redis://127.0.0.1:6399/2").url == "redis://127.0.0.1:6399/2"


def test_kombu_reads_the_broker_form_as_the_same_sentinels_master_and_password() -> None:
    target = broker(f"redis+sentinel://:{ENCODED}@s1:1,s2:2/mymaster/4?sentinel_password=sp1")
    assert target.transport_options == {"master_name": "mymaster",
                                        "sentinel_kwargs": {"password": "sp1"}}
    conn = Connection(target.url, transport_options=target.transport_options)
    assert conn.transport_cls == "sentinel"
    assert [(Connection(alt).hostname, Connection(alt).port) for alt in conn.alt] == \
        [("s1", 1), ("s2", 2)]
    assert conn.password == SECRET and conn.virtual_host == "4"


def test_the_celery_app_gets_the_sentinel_broker_and_master_name() -> None:
    app = make_app(make_settings(redis_url="redis+sentinel://s1:1,s2:2/mymaster/0"))
    assert app.conf.broker_url.startswith("sentinel://s1:1/0;sentinel://s2:2/0")
    options = app.conf.broker_transport_options
    assert options["master_name"] == "mymaster" and options["visibility_timeout"] > 0
    tls = make_app(make_settings(redis_url="rediss+sentinel://s1:1/m?ssl_cert_reqs=required"))
    assert tls.conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
