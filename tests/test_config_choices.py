"""The table of fixed choices (config/choices.py): every value outside it fails when the config is loaded, in
one line naming the key and its choices; the table matches the defaults; the build-time checks use its tuples."""

from __future__ import annotations

import pytest

from config import ConfigError, get_defaults, load_config
from config.choices import CHOICES, DIST_METRICS, VEHICLEID_SIZES, config_value


def _wrong_value(choices: tuple) -> object:
    """A value of the choices' type that is none of them."""
    return max(choices) + 1 if all(isinstance(c, int) for c in choices) else "not-a-choice"


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_a_value_outside_the_choices_fails_at_load_time_naming_key_and_choices(key):
    wrong = _wrong_value(CHOICES[key])
    with pytest.raises(ConfigError) as excinfo:
        load_config(None, [key, str(wrong)])
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(f"{key} = {wrong!r} is not valid")
    assert all(repr(choice) in message for choice in CHOICES[key])


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_every_choice_of_the_table_loads(key):
    for choice in CHOICES[key]:
        assert config_value(load_config(None, [key, str(choice)]), key) == choice


def test_every_table_key_exists_in_the_defaults_and_its_default_is_a_choice():
    defaults = get_defaults()
    for key, choices in CHOICES.items():
        value = config_value(defaults, key)  # a KeyError names a key the defaults lost
        assert value in choices, f"the default {key} = {value!r} is not one of {choices}"


def test_a_yaml_file_value_outside_the_choices_fails_at_load_time(tmp_path):
    recipe = tmp_path / "recipe.yml"
    recipe.write_text("TEST:\n  NECK_FEAT: middle\n")
    with pytest.raises(
        ConfigError, match=r"TEST.NECK_FEAT = 'middle' is not valid; expected one of: 'after', 'before'"
    ):
        load_config(recipe, [])


def test_build_time_checks_use_the_tables_tuples():
    """One list per key: the modules that build from a key check it against the table's own tuple."""
    import data.datasets.vehicleid as vehicleid
    import data.transforms as transforms
    import engine.evaluation.protocol as protocol
    import engine.run.precision as precision
    import modeling
    import modeling.pooling as pooling
    from config import choices

    assert modeling.NECKS is choices.NECKS and modeling.PRETRAIN_CHOICES is choices.PRETRAIN_CHOICES
    assert pooling.POOLINGS is choices.POOLINGS
    assert transforms.TRANSFORM_PIPELINES is choices.TRANSFORM_PIPELINES
    assert protocol.TEST_PROTOCOLS is choices.TEST_PROTOCOLS
    assert precision.AMP_MODES is choices.AMP_MODES
    assert vehicleid.VEHICLEID_PROTOCOLS is choices.VEHICLEID_PROTOCOLS
    # the values behind the choices: the test lists of VehicleID, the metric kernels' distances
    assert tuple(vehicleid.TEST_LISTS) == VEHICLEID_SIZES


def test_the_distance_kernels_accept_exactly_the_dist_metric_choices():
    from engine.evaluation import reid_metrics, retrieval_metrics

    assert tuple(reid_metrics.VALID_METRICS) == DIST_METRICS
    assert tuple(retrieval_metrics.VALID_METRICS) == DIST_METRICS


def test_build_time_checks_still_protect_a_hand_made_config():
    """A config that skipped load_config (a direct API caller) is still refused where the object is built."""
    from modeling.pooling import build_pooling

    with pytest.raises(ConfigError, match="MODEL.POOLING = 'median' is not valid"):
        build_pooling("median")
