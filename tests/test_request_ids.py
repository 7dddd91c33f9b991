"""The ``x-request-id`` the proxy generates: a random version-4 UUID in canonical form, as
Envoy's, never handed out twice (not across batches, not by a forked worker)."""

from __future__ import annotations

import collections
import uuid

from sidemesh.datapath.request_ids import request_id
from sidemesh.testing import in_forked_child


def test_ids_are_canonical_random_version_4_uuids_across_batches() -> None:
    ids = [request_id() for _ in range(64 * 40)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert str(parsed) == value  # lower-case 8-4-4-4-12
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # The variant digit takes each of its four values (8, 9, a, b), and every other
    # position varies: nothing but the dashes and the version is fixed.
    assert {value[19] for value in ids} == set("89ab")
    for position in (*range(8), 9, 15, 20, 35):
        counts = collections.Counter(value[position] for value in ids)
        assert len(counts) == 16, (position, counts)


def test_a_forked_worker_does_not_hand_out_its_parents_ids() -> None:
    request_id()  # the parent now holds a batch of made ids
    child = in_forked_child(lambda: ",".join(request_id() for _ in range(3))).split(",")
    assert set(child).isdisjoint(request_id() for _ in range(3))
