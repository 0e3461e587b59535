import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.errors import ConfigError
from exporter.preprocessing import Preprocessing, resolve


def test_mean_std_is_scale_and_bias():
    p = Preprocessing.from_mean_std((8, 8), [123.675, 116.28, 103.53], [58.395, 57.12, 57.375])
    x = np.full((1, 8, 8, 3), 200, np.uint8)
    expected = (200 - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
    np.testing.assert_allclose(p.normalize(x)[0, 0, 0], expected, rtol=1e-6)
    assert not p.uniform_scale


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(input_size=(0, 4)), "between 8 and 4096"),
        (dict(input_size=(32, 32), scale=0.0), "must not be zero"),
        (dict(input_size=(32, 32), scale=[1, 2]), "3 values"),
        (dict(input_size=(32, 32), channel_order="RGBA"), "channel_order"),
        (dict(input_size=(32, 32), resize="fill"), "resize"),
        (dict(input_size=(32, 32), in_model=True, scale=0.5), "twice"),
        (dict(input_size=(32, 32), bias=float("nan")), "finite"),
    ],
)
def test_nonsense_is_refused_with_the_reason(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Preprocessing(**kwargs)


def test_round_trip_through_json():
    p = Preprocessing((48, 40), channel_order="BGR", scale=[0.1, 0.2, 0.3], bias=[1, 2, 3], resize="center_crop")
    assert Preprocessing.from_dict(p.to_dict()) == p


def test_resolve_refuses_double_normalisation():
    declared = Preprocessing((32, 32), scale=1 / 127.5, bias=-1)
    with pytest.raises(ConfigError, match="a second time"):
        resolve(declared, (32, 32, 3), ["rescale"])
    detected = resolve(None, (32, 32, 3), ["rescale"])
    assert detected.in_model and detected.is_identity
    with pytest.raises(ConfigError, match="no preprocessing declared"):
        resolve(None, (32, 32, 3), [])
    with pytest.raises(ConfigError, match="does not match"):
        resolve(declared, (64, 64, 3), [])
    with pytest.raises(ConfigError, match="channel"):
        resolve(declared, (32, 32, 1), [])


_json = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=5),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
    max_leaves=12,
)
_keys = st.sampled_from(
    ["input_size", "channel_order", "scale", "bias", "resize", "interpolation", "in_model", "mean", "std", "version", "other"]
)


@given(st.one_of(_json, st.dictionaries(_keys, _json, max_size=6)))
def test_any_input_gives_a_contract_or_a_config_error(data):
    try:
        p = Preprocessing.from_dict(data)
    except ConfigError:
        return
    assert isinstance(p, Preprocessing) and len(p.scale) == p.channels
