"""plugin.record, the small stand-in for dataclasses."""


def test_record_behaves_like_the_dataclasses_it_replaces():
    import pytest as _pytest

    from plugin.record import Factory, as_dict, value_class

    @value_class(frozen=True, unhashed=("note",))
    class Point:
        x: int
        y: int = 0
        note: dict | None = None

    @value_class
    class Bag:
        items: dict = Factory(dict)

    p = Point(1, y=2)
    assert (p.x, p.y, p.note) == (1, 2, None) and p == Point(1, 2) and p != Point(2, 1)
    assert hash(Point(1, 2, {"a": 1})) == hash(Point(1, 2)) and repr(p) == "Point(x=1, y=2, note=None)"
    assert as_dict(p) == {"x": 1, "y": 2, "note": None}
    with _pytest.raises(AttributeError):
        p.x = 3
    with _pytest.raises(TypeError):
        Point()
    with _pytest.raises(TypeError):
        Point(1, x=1)
    a, b = Bag(), Bag()
    a.items["k"] = 1
    assert b.items == {} and a != b, "each instance gets its own default"
    with _pytest.raises(TypeError):
        hash(a)
