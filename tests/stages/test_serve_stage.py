"""``lmforge serve``'s config: limits validated before anything loads, the API key from the option or
``LMFORGE_API_KEY``, a missing model refused."""

from __future__ import annotations

import pytest

from lmforge.config import ConfigError, from_dict
from lmforge.stages import serve


def test_settings_take_the_key_from_the_option_then_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("LMFORGE_API_KEY", "from-env")
    assert serve.settings(from_dict(serve.Config, {"model": "m"})).api_key == "from-env"
    assert serve.settings(from_dict(serve.Config, {"model": "m", "api_key": "opt"})).api_key == "opt"
    monkeypatch.delenv("LMFORGE_API_KEY")
    s = serve.settings(from_dict(serve.Config, {"model": "m", "max_tokens": 7, "max_batch": 3}))
    assert (s.api_key, s.max_tokens, s.max_batch) == ("", 7, 3)


@pytest.mark.parametrize(
    "override,key", [({"port": 70000}, "port"), ({"max_n": 0}, "max_n"), ({"threads": -1}, "threads")]
)
def test_impossible_limits_fail_naming_the_key(override, key) -> None:
    with pytest.raises(ConfigError, match=key):
        from_dict(serve.Config, {"model": "m", **override})


def test_a_model_is_required() -> None:
    with pytest.raises(ConfigError, match="model"):
        serve.main(from_dict(serve.Config, {}))


@pytest.mark.parametrize("host", ["999.1.1.1", "1.2.3", "bad host", "", "-x.example", "a" * 300])
def test_a_host_that_is_no_address_is_refused_naming_the_key(host) -> None:
    with pytest.raises(ConfigError, match="^host: ") as e:
        from_dict(serve.Config, {"model": "m", "host": host})
    assert "neither an IP address nor a host name" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::1", "::", "localhost"])
def test_addresses_and_local_names_are_accepted(host) -> None:
    assert from_dict(serve.Config, {"model": "m", "host": host}).host == host


def test_max_messages_reaches_the_app_settings() -> None:
    assert serve.settings(from_dict(serve.Config, {"model": "m"})).max_messages == 2048
    assert serve.settings(from_dict(serve.Config, {"model": "m", "max_messages": 9})).max_messages == 9
    with pytest.raises(ConfigError, match="max_messages"):
        from_dict(serve.Config, {"model": "m", "max_messages": 0})
