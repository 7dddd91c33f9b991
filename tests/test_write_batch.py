"""Small writes of one loop turn go out together at the next (datapath/writes.py):
nothing is lost, reordered or written to a closed transport, and a large write goes out
at once, after what was held."""

from __future__ import annotations

import asyncio

from sidemesh.datapath.writes import BATCH_LIMIT, WriteBatch


class _Transport:
    def __init__(self, name: str, log: list[tuple[str, bytes]]) -> None:
        self.name = name
        self.log = log
        self.closing = False

    def write(self, data: bytes) -> None:
        self.log.append((self.name, data))

    def is_closing(self) -> bool:
        return self.closing


def test_held_writes_go_out_in_order_on_the_next_turn_and_a_large_one_at_once() -> None:
    async def main() -> list[list[tuple[str, bytes]]]:
        log: list[tuple[str, bytes]] = []
        a, b = _Transport("a", log), _Transport("b", log)
        batch = WriteBatch(asyncio.get_running_loop())
        batch.write(a, b"1")  # type: ignore[arg-type]
        batch.write(b, b"2")  # type: ignore[arg-type]
        batch.write(a, b"3")  # type: ignore[arg-type]
        seen = [list(log)]
        await asyncio.sleep(0)
        seen.append(list(log))
        batch.write(b, b"4")  # type: ignore[arg-type]
        big = b"x" * (BATCH_LIMIT + 1)
        batch.write(a, big)  # type: ignore[arg-type]
        seen.append(list(log))
        return seen

    held, turned, large = asyncio.run(main())
    assert held == []
    assert turned == [("a", b"1"), ("b", b"2"), ("a", b"3")]
    assert large[3:] == [("b", b"4"), ("a", b"x" * (BATCH_LIMIT + 1))]


def test_a_flush_writes_everything_held_but_to_transports_already_closing() -> None:
    async def main() -> list[tuple[str, bytes]]:
        log: list[tuple[str, bytes]] = []
        a, b = _Transport("a", log), _Transport("b", log)
        batch = WriteBatch(asyncio.get_running_loop())
        batch.write(a, b"kept")  # type: ignore[arg-type]
        batch.write(b, b"dropped")  # type: ignore[arg-type]
        b.closing = True
        batch.flush()
        await asyncio.sleep(0)  # the scheduled flush finds nothing more
        return log

    assert asyncio.run(main()) == [("a", b"kept")]
