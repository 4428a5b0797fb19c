"""Saved plans are applied only while they still describe what would be done (like terraform)."""

from __future__ import annotations

import pytest

from engine.decide import plan_pass
from engine.errors import StalePlanError
from engine.reconcile import Reconciler
from engine.savedplan import check_current, load, save
from tests.fakes import FakeClock, FakeProvider, desired_for, manifest


@pytest.fixture
def planned(tmp_path):
    provider, clock = FakeProvider(), FakeClock()
    Reconciler(
        desired_for(manifest(model={"name": "churn", "version": "7"})), provider, clock, "t"
    ).apply()
    desired = desired_for(manifest())
    live = provider.read_endpoint("churn")
    plans = plan_pass(desired, live, clock.now())
    path = tmp_path / "plan.json"
    save(path, tmp_path / "churn.yaml", desired, live, plans)
    return provider, clock, desired, path


def current(provider, clock, desired):
    live = provider.read_endpoint("churn")
    return live, plan_pass(desired, live, clock.now())


def test_an_unchanged_endpoint_accepts_its_saved_plan(planned):
    provider, clock, desired, path = planned
    live, plans = current(provider, clock, desired)
    check_current(load(path), desired, live, plans)


def test_a_plan_is_refused_when_the_endpoint_changed_since(planned):
    provider, clock, desired, path = planned
    v7 = next(iter(provider.endpoints["churn"].deployments))
    provider.add_deployment("churn", "churn-x")
    provider.set_live("churn", traffic={v7: 100}, mirror={"churn-x": 10})
    live, plans = current(provider, clock, desired)
    with pytest.raises(StalePlanError, match="changed since the plan was made"):
        check_current(load(path), desired, live, plans)


def test_a_plan_is_refused_when_the_manifest_changed_since(planned):
    provider, clock, desired, path = planned
    other = desired_for(manifest(on_failure="hold"))
    live, plans = current(provider, clock, other)
    with pytest.raises(StalePlanError, match="manifest .* changed"):
        check_current(load(path), other, live, plans)


def test_a_garbled_plan_file_is_a_clear_error(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text("{not json")
    with pytest.raises(StalePlanError, match="not a readable saved plan"):
        load(path)


def test_a_plan_made_before_a_bake_ended_is_out_of_date_after_it(tmp_path):
    provider, clock = FakeProvider(), FakeClock()
    Reconciler(
        desired_for(manifest(model={"name": "churn", "version": "7"})), provider, clock, "t"
    ).apply()
    desired = desired_for(manifest())
    Reconciler(desired, provider, clock, "t").apply()  # now baking in the mirror step
    rec = Reconciler(desired, provider, clock, "t")
    live = provider.read_endpoint("churn")
    path = tmp_path / "plan.json"
    save(path, tmp_path / "m.yaml", desired, live, plan_pass(desired, live, clock.now()))
    clock.advance(11 * 60)
    live = provider.read_endpoint("churn")
    plans = plan_pass(desired, live, clock.now(), rec.observe(live))
    with pytest.raises(StalePlanError, match="out of date"):
        check_current(load(path), desired, live, plans)
