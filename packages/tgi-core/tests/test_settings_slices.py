"""The slices follow the table: each field a setting fills (``Spec.to``) exists and has that
setting's default, and every other field is one that ``Settings`` computes (or no setting)."""

from __future__ import annotations

import dataclasses

import pytest

from tgi_core.settings import (
    FIELDS,
    ProfileSettings,
    RunnerSettings,
    SchedulerSettings,
    ServerSettings,
    ValidationLimits,
)
from tgi_core.settings.fields import ROUTES
from tgi_core.settings.slices import ImageLimits

SLICES: dict[str, type] = {
    "scheduler": SchedulerSettings,
    "runner": RunnerSettings,
    "server": ServerSettings,
    "limits": ValidationLimits,
    "images": ImageLimits,
    "profile": ProfileSettings,
}
# What Settings computes from several settings, and what no setting gives (engine constants).
COMPUTED = {
    "scheduler": {"speculate", "max_generation_chunk", "min_prefill_len"},
    "runner": {"dtype", "rank", "rope_scaling", "rope_factor", "profile", "speculate"},
    "server": {"hostname", "limits", "images"},
    "limits": {"adapter_ids", "max_generation_chunk"},
    "images": set(),
    "profile": set(),
}
BY_NAME = {spec.name: spec for spec in FIELDS}


def test_the_table_sends_settings_to_the_slices_only() -> None:
    assert set(ROUTES) == set(SLICES)


@pytest.mark.parametrize("target", sorted(SLICES))
def test_every_slice_field_is_filled_by_the_table_or_computed(target: str) -> None:
    filled = [field for _, field in ROUTES[target]]
    assert len(filled) == len(set(filled)), "two settings fill one field"
    names = {field.name for field in dataclasses.fields(SLICES[target])}
    assert set(filled) <= names, "the table fills a field the slice does not have"
    assert names - set(filled) == COMPUTED[target]


@pytest.mark.parametrize("target", sorted(SLICES))
def test_a_filled_field_defaults_to_the_table_unless_resolved(target: str) -> None:
    defaults = {field.name: field.default for field in dataclasses.fields(SLICES[target])}
    for name, field in ROUTES[target]:
        spec = BY_NAME[name]
        if spec.default is None and spec.default_doc is not None:
            continue  # derived at start-up (resolve.py): the slice holds Gaudi's value
        assert defaults[field] == spec.default, f"{target}.{field} != the default of {name}"
