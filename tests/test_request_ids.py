"""The ``x-request-id`` the proxy generates: a random version-4 UUID in canonical form, as
Envoy's, never handed out twice (not across batches, not by a forked worker)."""

from __future__ import annotations

import collections
import os
import select
import uuid

from sidemesh.datapath.request_ids import request_id


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
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids go to the parent, then it exits at once
        try:
            os.write(write_end, ",".join(request_id() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 10)
        assert ready, "the forked child wrote nothing within 10 s"
        child = os.read(read_end, 200).decode().split(",")
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert set(child).isdisjoint(request_id() for _ in range(3))
