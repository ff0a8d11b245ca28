import json

import pytest

from gauntlet.config import GauntletConfig, load_config
from gauntlet.errors import ConfigError


def test_defaults_are_the_protocol_reference_numbers():
    c = GauntletConfig()
    s = c.sparseloco
    assert (s.chunk_size, s.topk, s.quant_bits, s.quant_range_sigmas) == (64, 64, 2, 6.0)
    assert (s.ef_decay, s.ef_scale, s.outer_lr) == (0.95, 1.0, 1.0)
    assert c.inner.steps == 30 and c.inner.lr == 1.3e-4 and c.inner.betas == (0.9, 0.95)
    assert (c.inner.weight_decay, c.inner.grad_clip) == (0.1, 1.0)
    assert (c.diloco.outer_lr, c.diloco.momentum, c.diloco.nesterov) == (0.7, 0.9, True)


def test_overrides_parse_json_values_and_bare_strings():
    c = load_config(overrides=["sparseloco.topk=32", "inner.betas=[0.9,0.99]", "run_name=my-run"])
    assert c.sparseloco.topk == 32 and c.inner.betas == (0.9, 0.99) and c.run_name == "my-run"


def test_file_then_overrides(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('run_name = "from-file"\n[sparseloco]\nquant_bits = 4\ntopk = 16\n')
    c = load_config(toml, ["sparseloco.topk=8"])
    assert (c.run_name, c.sparseloco.quant_bits, c.sparseloco.topk) == ("from-file", 4, 8)
    js = tmp_path / "run.json"
    js.write_text(json.dumps({"sparseloco": {"combine": "scatter_mean"}}))
    assert load_config(js).sparseloco.combine == "scatter_mean"


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["sparseloco.quant_bits=3"], "sparseloco.quant_bits"),
        (["sparseloco.topk=5000"], "exceeds"),
        (["sparseloco.nope=1"], "sparseloco.nope"),
        (["noequals"], "section.field=value"),
        (["run_name=has space"], "run_name"),
    ],
)
def test_invalid_settings_name_the_field(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(overrides=overrides)


def test_unreadable_or_malformed_files_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[sparseloco\n")
    with pytest.raises(ConfigError, match="not valid"):
        load_config(bad)


def test_config_is_frozen_and_hash_tracks_every_field():
    c = GauntletConfig()
    with pytest.raises(ValueError):
        c.seed = 3  # type: ignore[misc]
    assert c.run_hash() == GauntletConfig().run_hash() and len(c.run_hash()) == 32
    assert load_config(overrides=["sparseloco.ef_decay=0.9"]).run_hash() != c.run_hash()
