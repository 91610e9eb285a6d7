"""The store author's own tests, with our fixtures (run: pytest --store sqlitestore:make)."""

from storeharness import WorldResult


def test_every_rank_reads_what_rank_zero_wrote(world, store) -> None:  # type: ignore[no-untyped-def]
    store.set("greeting", "hello")
    result: WorldResult = world(lambda ctx: ctx.store.get("greeting"), 4, workers="process")
    assert [r.fate.value for r in result] == ["returned"] * 4
    assert result.values() == [b"hello"] * 4
