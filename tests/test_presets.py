"""The named presets of ``cltk compare`` and how a method's config is put together from a preset, --set and a spec."""
import pytest

from cltk.cli import CLIError, method_configs, parse_method_spec
from cltk.presets import PRESETS


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_its_configs(name):
    p = PRESETS[name]
    if p.benchmark == "bbc-cpt":       # its methods are cltk.lm.cpt's, configured there
        assert not p.method_config
        return
    specs = {}
    for spec in p.methods:
        label, method, overrides = parse_method_spec(spec)
        specs[label] = (method, overrides)
    assert set(p.method_config) <= {m for m, _ in specs.values()}, "method_config names a method not in the preset"
    configs = method_configs(specs, dict(p.config), p.method_config, [])
    for label, (method, _) in specs.items():
        for field, value in p.method_config.get(method, {}).items():
            assert getattr(configs[label], field) == value


def test_config_precedence_preset_then_method_then_set_then_spec():
    parsed = [parse_method_spec(s) for s in ("awm", "awm:resolution=[8,8]", "awm:lr=0.5", "finetune")]
    specs = {label: (name, overrides) for label, name, overrides in parsed}
    got = method_configs(specs, {"lr": 0.1, "momentum": 0.3}, {"awm": {"lr": 0.2, "head_lr": 0.04}},
                         ["head_lr=0.05"])
    assert (got["awm"].lr, got["awm"].head_lr, got["awm"].momentum) == (0.2, 0.05, 0.3)
    assert got["awm(resolution=8x8)"].lr == 0.2 and list(got["awm(resolution=8x8)"].resolution) == [8, 8]
    assert got["awm(lr=0.5)"].lr == 0.5                      # the spec's own field wins
    assert got["finetune"].lr == 0.1                         # another method's settings do not leak
    with pytest.raises(CLIError, match="--set buffer_size=3: no selected method has a config field 'buffer_size'"):
        method_configs(specs, {}, {}, ["buffer_size=3"])
    with pytest.raises(ValueError, match="lr"):
        method_configs(specs, {}, {"awm": {"lr": -1.0}}, [])
