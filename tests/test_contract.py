"""The provider contract: one suite, run unchanged against the local backend and the Azure fake.

Each test arranges the world through a `Backend` (what stood on the platform before the engine
came: endpoints, deployments, a split set in the portal) and then speaks only the provider
interface (`engine.providers.base.Provider`) or drives the reconciler over it. What the service
documents (traffic sums to 0 or 100, one mirror target at most 50 %, no live and mirrored
traffic on one deployment, no delete while a deployment carries traffic, name rules) and what
the engine relies on (refusals change nothing, a write based on a stale read is refused, the
lease keeps a second writer off) must hold on both, so neither can drift from the rules.
Only the test that calls a deployment needs the local backend's server.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import ConflictError, LeaseHeldError, PermanentError
from engine.invariants import endpoint_violations, transition_violations
from engine.live import DeploymentRequest, EndpointWrite, LiveEndpoint, ProvisioningState
from engine.providers.base import STATE_TAG_PREFIX, Provider
from engine.providers.local.provider import LocalProvider
from engine.providers.local.store import ControlPlane, DeploymentRecord, new_uid
from engine.providers.local.testing import make_toy_model
from engine.reconcile import Reconciler
from engine.state import Phase, RolloutState, decode, encode
from tests.azure_fake import FakeAzure, block_network, checked_fake, provider_for
from tests.fakes import FakeClock, desired_for, manifest

EP = "churn"
DEPLOYMENTS = ("blue", "green", "grey")


@dataclass
class Backend:
    """A provider under test and the means to arrange its platform from outside the engine."""

    name: str
    provider: Provider
    second_provider: Callable[[], Provider]  # another process's view of the same platform
    add_endpoint: Callable[[str, dict[str, str]], None]  # endpoint, tags
    add_deployment: Callable[[str, str, str, str], None]  # endpoint, name, model, version
    set_split: Callable[[str, dict[str, int], dict[str, int]], None]  # as the portal would
    toy_model: Callable[[], DeploymentRequest]  # a registered model with its serving folder


def local_backend(home: Path, models: Path) -> Backend:
    control = ControlPlane(home)

    def add_endpoint(endpoint: str, tags: dict[str, str]) -> None:
        record = control.create_endpoint(endpoint)
        if tags:  # tags outside the engine's prefix: written as "owned" under an unused one
            control.update_endpoint(
                endpoint, traffic={}, mirror={}, tags=tags, tag_prefix="\0",
                expected_revision=record.revision,
            )  # fmt: skip

    def add_deployment(endpoint: str, name: str, model: str, version: str) -> None:
        record = DeploymentRecord(
            name, model, version, str(models), new_uid(), state=ProvisioningState.SUCCEEDED.value
        )
        control.add_deployment(endpoint, record)

    def set_split(endpoint: str, traffic: dict[str, int], mirror: dict[str, int]) -> None:
        current = control.read_endpoint(endpoint)
        assert current is not None
        control.update_endpoint(
            endpoint, traffic=traffic, mirror=mirror, tags={}, tag_prefix="\0",
            expected_revision=current.revision,
        )  # fmt: skip

    def toy_model() -> DeploymentRequest:
        toy = make_toy_model(home, models)
        (toy.model_dir / "environment.yml").write_text("name: toy\ndependencies: [python=3.11]\n")
        return toy.request("toy-1")

    return Backend(
        "local",
        LocalProvider(home),
        lambda: LocalProvider(home),
        add_endpoint,
        add_deployment,
        set_split,
        toy_model,
    )


def azure_backend(fake: FakeAzure, models: Path) -> Backend:
    def add_endpoint(endpoint: str, tags: dict[str, str]) -> None:
        fake.add_endpoint(endpoint, tags=tags)

    def add_deployment(endpoint: str, name: str, model: str, version: str) -> None:
        fake.add_deployment(endpoint, name, (model, version))

    def toy_model() -> DeploymentRequest:
        # The same folder and behaviour as the local toy: it answers with its version and
        # the request's numbers doubled.
        folder = models / "toy"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "score.py").write_text("def init():\n    pass\n\n\ndef run(raw):\n    return 0\n")
        (folder / "environment.yml").write_text("name: toy\ndependencies: [python=3.11]\n")
        fake.register_model("toy", "1")
        return DeploymentRequest("toy-1", "toy", "1", str(folder))

    def scorer(endpoint: str, deployment: str, body: bytes) -> tuple[int, bytes]:
        version = fake.live(endpoint).deployments[deployment].model_version
        data = json.loads(body)["data"]
        return 200, json.dumps({"version": version, "result": [x * 2 for x in data]}).encode()

    fake.scorer = scorer
    return Backend(
        "azureml",
        provider_for(fake),
        lambda: provider_for(fake),
        add_endpoint,
        add_deployment,
        fake.set_traffic,
        toy_model,
    )


@pytest.fixture(params=["local", "azureml"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    block_network(monkeypatch)  # loopback only: the local backend's server is all there is
    if request.param == "local":
        home = request.getfixturevalue("local_home")
        yield local_backend(home, tmp_path / "models")
    else:
        yield from (azure_backend(f, tmp_path / "models") for f in checked_fake())


@pytest.fixture
def three(backend: Backend) -> LiveEndpoint:
    """Endpoint `churn` with blue (serving 100 %), green and grey, and a tag of its owners."""
    backend.add_endpoint(EP, {"team": "risk"})
    for name in DEPLOYMENTS:
        backend.add_deployment(EP, name, "churn", "7")
    backend.set_split(EP, {"blue": 100}, {})
    return backend.provider.read_endpoint(EP)


def write(backend: Backend, traffic, mirror=None, tags=None, *, revision: str) -> LiveEndpoint:
    return backend.provider.update_endpoint(
        EP, EndpointWrite(traffic, mirror or {}, tags or {}), expected_revision=revision
    )


# -- endpoints -----------------------------------------------------------------------------


def test_a_missing_endpoint_reads_as_absent_and_creating_it_twice_creates_one(
    backend: Backend,
) -> None:
    assert backend.provider.read_endpoint(EP).exists is False
    created = backend.provider.create_endpoint(EP)
    again = backend.provider.create_endpoint(EP)
    assert created.exists and created.deployments == {} and created.live_traffic() == {}
    assert again.revision == created.revision, "the second create wrote nothing"
    assert endpoint_violations(again) == []


@pytest.mark.parametrize("bad", ["7-credit", "ab", "credit-risk-", "a" * 33, "credit_risk"])
def test_names_outside_the_rules_are_refused_before_anything_is_created(
    backend: Backend, bad: str
) -> None:
    with pytest.raises(PermanentError) as refused:
        backend.provider.create_endpoint(bad)
    assert refused.value.code == "InvalidName"
    backend.provider.create_endpoint(EP)
    request = DeploymentRequest(bad, "churn", "7", "/nonexistent")
    with pytest.raises(PermanentError) as refused:
        backend.provider.create_deployment(EP, request)
    assert refused.value.code == "InvalidName"
    assert backend.provider.read_endpoint(EP).deployments == {}


# -- writes --------------------------------------------------------------------------------


def test_a_write_sets_traffic_mirror_and_engine_tags_together_and_keeps_other_tags(
    backend: Backend, three: LiveEndpoint
) -> None:
    traffic, mirror = {"blue": 90, "green": 10}, {"grey": 20}
    tags = encode(RolloutState(phase=Phase.PROGRESSING, traffic=traffic, mirror=mirror))
    after = write(backend, traffic, mirror, tags, revision=three.revision)

    assert (after.live_traffic(), after.live_mirror()) == ({"blue": 90, "green": 10}, {"grey": 20})
    assert after.tags == {"team": "risk", **tags}
    assert after.revision != three.revision
    assert backend.provider.read_endpoint(EP) == after, "what the write returns is what is read"
    assert transition_violations(three, after) == []

    cleared = write(backend, {"blue": 100}, revision=after.revision)
    assert cleared.tags == {"team": "risk"}, "the engine's tags are replaced as a whole"
    assert cleared.live_mirror() == {}


REFUSED = {
    "traffic summing to 90": ({"blue": 80, "green": 10}, {}),
    "traffic summing to 110": ({"blue": 100, "green": 10}, {}),
    "a negative share": ({"blue": 110, "green": -10}, {}),
    "mirror above 50 %": ({"blue": 100}, {"green": 60}),
    "mirror to two deployments": ({"blue": 100}, {"green": 10, "grey": 10}),
    "live and mirrored traffic on one deployment": ({"blue": 90, "green": 10}, {"green": 10}),
    "traffic to a deployment that does not exist": ({"blue": 50, "ghost": 50}, {}),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_write_breaking_the_services_rules_is_refused_and_changes_nothing(
    backend: Backend, three: LiveEndpoint, case: str
) -> None:
    traffic, mirror = REFUSED[case]
    with pytest.raises(PermanentError) as refused:
        write(backend, traffic, mirror, revision=three.revision)
    assert not isinstance(refused.value, ConflictError)
    assert refused.value.endpoint == EP
    assert EP in str(refused.value)
    assert backend.provider.read_endpoint(EP) == three


@pytest.mark.parametrize(
    "tags",
    [{"team": "platform"}, {f"{STATE_TAG_PREFIX}decision": "x" * 257}],
    ids=["a tag outside the engine's prefix", "a tag value over 256 characters"],
)
def test_tags_the_engine_may_not_write_are_refused_and_change_nothing(
    backend: Backend, three: LiveEndpoint, tags: dict[str, str]
) -> None:
    with pytest.raises(PermanentError):
        write(backend, {"blue": 100}, tags=tags, revision=three.revision)
    assert backend.provider.read_endpoint(EP) == three


def test_a_write_based_on_a_stale_read_is_refused_and_the_other_change_stands(
    backend: Backend, three: LiveEndpoint
) -> None:
    backend.set_split(EP, {"blue": 50, "green": 50}, {})  # someone in the portal
    with pytest.raises(ConflictError):
        write(backend, {"blue": 90, "green": 10}, revision=three.revision)
    assert backend.provider.read_endpoint(EP).live_traffic() == {"blue": 50, "green": 50}


SHARES = st.sampled_from([0, 0, 10, 20, 50, 60, 90, 100, -10, 101])
NAMES = st.sampled_from([*DEPLOYMENTS, "ghost"])
BREAKS = [None, "sum", "negative", "over 100", "mirror over 50", "two mirrors", "both", "ghost"]


@st.composite
def near_rules(draw) -> tuple[dict[str, int], dict[str, int]]:
    """A split that keeps the rules, or one that breaks exactly one of them at its edge."""
    live, other, spare = draw(st.permutations(DEPLOYMENTS))
    share = draw(st.sampled_from([0, 10, 50, 90]))
    traffic = {live: 100 - share, other: share}
    mirror = {spare: draw(st.sampled_from([1, 20, 50]))} if draw(st.booleans()) else {}
    broken = draw(st.sampled_from(BREAKS))
    if broken == "sum":
        traffic[live] += draw(st.sampled_from([-1, 1]))
    elif broken == "negative":
        traffic = {live: 100 + share, other: -share or -1}
    elif broken == "over 100":
        traffic = {live: 101}
    elif broken == "mirror over 50":
        mirror = {spare: 51}
    elif broken == "two mirrors":
        mirror = {spare: 10, other: 10} if share == 0 else {spare: 10, "ghost": 10}
    elif broken == "both":
        mirror = {live: 10}
    elif broken == "ghost":
        traffic = {live: 50, "ghost": 50}
    return traffic, mirror


def any_split():
    anything = st.tuples(
        st.dictionaries(NAMES, SHARES, max_size=3), st.dictionaries(NAMES, SHARES, max_size=2)
    )
    return st.one_of(near_rules(), anything)


def keeps_the_rules(traffic: dict[str, int], mirror: dict[str, int]) -> bool:
    """The documented rules, written out independently of both backends."""
    if any(not 0 <= v <= 100 for v in [*traffic.values(), *mirror.values()]):
        return False
    live = {k: v for k, v in traffic.items() if v}
    shadow = {k: v for k, v in mirror.items() if v}
    return (
        not (set(live) | set(shadow)) - set(DEPLOYMENTS)
        and sum(live.values()) in (0, 100)
        and len(shadow) <= 1
        and all(v <= 50 for v in shadow.values())
        and not set(live) & set(shadow)
    )


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(split=any_split())
def test_a_write_is_accepted_exactly_when_it_keeps_the_rules_and_never_breaks_an_invariant(
    backend: Backend, three: LiveEndpoint, split: tuple[dict[str, int], dict[str, int]]
) -> None:
    traffic, mirror = split
    before = backend.provider.read_endpoint(EP)
    try:
        after = write(backend, traffic, mirror, revision=before.revision)
    except PermanentError:
        assert not keeps_the_rules(traffic, mirror), f"refused a valid write {split}"
        assert backend.provider.read_endpoint(EP) == before
        return
    assert keeps_the_rules(traffic, mirror), f"accepted {split}"
    assert after.live_traffic() == {k: v for k, v in traffic.items() if v}
    assert after.live_mirror() == {k: v for k, v in mirror.items() if v}
    assert transition_violations(before, after) == []


# -- deployments ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["live", "mirrored"])
def test_a_deployment_with_traffic_is_never_deleted(
    backend: Backend, three: LiveEndpoint, kind: str
) -> None:
    mirror = {"green": 20} if kind == "mirrored" else {}
    traffic = {"blue": 100} if kind == "mirrored" else {"blue": 50, "green": 50}
    write(backend, traffic, mirror, revision=three.revision)
    with pytest.raises(PermanentError) as refused:
        backend.provider.delete_deployment(EP, "green")
    assert refused.value.code == "DeploymentHasTraffic"
    assert "green" in backend.provider.read_endpoint(EP).deployments


def test_deleting_a_deployment_without_traffic_is_idempotent(
    backend: Backend, three: LiveEndpoint
) -> None:
    backend.provider.delete_deployment(EP, "grey")
    backend.provider.delete_deployment(EP, "grey")
    backend.provider.delete_deployment(EP, "never-was")
    after = backend.provider.read_endpoint(EP)
    assert set(after.deployments) == {"blue", "green"}
    assert transition_violations(three, after) == []


def test_a_deployment_is_created_once_provisions_and_answers_calls_that_name_it(
    backend: Backend,
) -> None:
    request = backend.toy_model()
    backend.provider.create_endpoint(EP)
    backend.provider.create_deployment(EP, request)
    backend.provider.create_deployment(EP, request)  # a rerun after a crash adopts it
    live = backend.provider.wait_for_deployment(EP, request.name, timeout_s=60)

    (created,) = live.deployments.values()
    assert created.state is ProvisioningState.SUCCEEDED
    assert (created.model_name, created.model_version) == ("toy", request.model_version)
    assert live.traffic == {request.name: 0}
    answer = backend.provider.invoke(EP, request.name, b'{"data": [1, 2]}')
    assert answer.status == 200
    assert json.loads(answer.body) == {"version": request.model_version, "result": [2, 4]}
    assert backend.provider.invoke(EP, "not-there", b'{"data": [1]}').status == 404


# -- the lease -----------------------------------------------------------------------------


def race(backend: Backend, *, adopted: bool) -> list[tuple[LiveEndpoint, Exception, LiveEndpoint]]:
    """A first reconciler's pass on `churn`, and, once it holds the lease, a second run's pass:
    returns the endpoint before the second run, what the second run raised, the endpoint after.
    With `adopted`, the first run's pass restores drift on an endpoint it already manages;
    otherwise it adopts the lone serving deployment of an endpoint without rollout state."""
    desired = desired_for(manifest())
    backend.add_endpoint(EP, {})
    backend.add_deployment(EP, desired.name, "churn", "8")
    backend.add_deployment(EP, "other", "churn", "7")
    backend.set_split(EP, {desired.name: 100}, {})
    clock = FakeClock()
    first = Reconciler(desired, backend.provider, clock, "run-a@host:1")
    second = Reconciler(desired, backend.second_provider(), clock, "run-b@host:2")
    if adopted:
        first.apply()
        backend.set_split(EP, {desired.name: 100}, {"other": 10})  # drift from the portal
    seen: list[tuple[LiveEndpoint, Exception, LiveEndpoint]] = []

    def meanwhile(reason: str) -> None:
        before = backend.provider.read_endpoint(EP)
        with pytest.raises(Exception) as raised:
            second.apply()
        seen.append((before, raised.value, backend.provider.read_endpoint(EP)))

    first.on_event = meanwhile
    first.apply()
    settled = backend.provider.read_endpoint(EP)
    assert decode(settled.tags).stable == desired.name
    assert decode(settled.tags).lease is None, "released at the end of the first pass"
    assert settled.live_mirror() == {}
    assert second.apply().plans == (), "the first run is done: nothing left for the second"
    assert backend.provider.read_endpoint(EP).revision == settled.revision
    return seen


def test_a_second_reconciler_meets_the_lease_and_writes_nothing(backend: Backend) -> None:
    ((before, error, after),) = race(backend, adopted=True)
    assert isinstance(error, LeaseHeldError), error
    assert error.holder == "run-a@host:1"
    assert decode(before.tags).lease is not None
    assert after == before, "the second run wrote nothing"


def test_a_second_reconciler_meets_the_lease_while_the_first_adopts_the_endpoint(
    backend: Backend,
) -> None:
    ((before, error, after),) = race(backend, adopted=False)
    assert after == before, "the second run wrote nothing"
    assert isinstance(error, LeaseHeldError), error
