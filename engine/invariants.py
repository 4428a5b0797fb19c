"""The design's invariants as checks over live endpoints, for tests and self-checks.

They must hold after every single write, crash or no crash: live traffic sums to 0 or 100; no
deployment has live and mirrored traffic; mirror is at most 50 % to at most one deployment; a
deployment with traffic is never deleted; stable is not touched until a promotion completes; the
tags describe the live traffic.
"""

from __future__ import annotations

from dataclasses import replace

from engine.live import LiveEndpoint
from engine.state import decode, has_state


def endpoint_violations(live: LiveEndpoint, *, check_tags: bool = True) -> list[str]:
    """What is wrong with one endpoint as it stands."""
    if not live.exists:
        return []
    found = []
    traffic, mirror = live.live_traffic(), live.live_mirror()
    if any(
        not isinstance(v, int) or v < 0 for v in [*live.traffic.values(), *live.mirror.values()]
    ):
        found.append(f"traffic or mirror holds a negative or non-integer share: {live.traffic}")
    if sum(traffic.values()) not in (0, 100):
        found.append(f"live traffic sums to {sum(traffic.values())}, not 0 or 100: {traffic}")
    both = set(traffic) & set(mirror)
    if both:
        found.append(f"{', '.join(sorted(both))} has both live and mirrored traffic")
    if len(mirror) > 1:
        found.append(f"mirror goes to more than one deployment: {mirror}")
    if any(v > 50 for v in mirror.values()):
        found.append(f"mirror above 50 %: {mirror}")
    unknown = (set(traffic) | set(mirror)) - set(live.deployments)
    if unknown:
        found.append(f"traffic names deployments that do not exist: {', '.join(sorted(unknown))}")
    state = replace(decode(live.tags), lease=None)
    described = check_tags and has_state(live.tags) and not state.is_empty
    if described and (state.traffic != traffic or state.mirror != mirror):
        found.append(
            f"tags record traffic {state.traffic} mirror {state.mirror}, live is {traffic} "
            f"mirror {mirror}"
        )
    return found


def transition_violations(before: LiveEndpoint, after: LiveEndpoint) -> list[str]:
    """What one write (or create/delete) did that the invariants forbid."""
    if not before.exists:
        return endpoint_violations(after)
    old, new = decode(before.tags), decode(after.tags)
    # A write that only takes or releases the lease describes nothing new: traffic that drifted
    # out of band stays reported (and restored) by the next write, not by this one.
    lease_only = (
        replace(old, lease=None) == replace(new, lease=None)
        and before.live_traffic() == after.live_traffic()
        and before.live_mirror() == after.live_mirror()
    )
    found = endpoint_violations(after, check_tags=not lease_only)
    for name in set(before.deployments) - set(after.deployments):
        if before.traffic.get(name) or before.mirror.get(name):
            found.append(f"{name} was deleted while it carried traffic")
    stable = old.stable
    promoted = new.stable != stable and new.previous == stable
    undone = new.stable == old.previous and old.previous is not None
    if stable and stable in before.deployments and not (promoted or undone):
        if stable not in after.deployments:
            found.append(f"stable {stable} was deleted before a promotion completed")
        elif after.deployments[stable] != before.deployments[stable]:
            found.append(f"stable {stable} was changed before a promotion completed")
        if new.stable not in (None, stable):
            found.append(f"stable changed from {stable} to {new.stable} without a promotion")
    return found
