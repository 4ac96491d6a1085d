"""Value classes without `dataclasses`.

Importing `dataclasses` pulls in `inspect` (and ast, dis, tokenize), and decorating a
class compiles code for it: together ~7 ms on every container start, for nine small
classes. `value_class` gives them what they use of dataclasses, generically: an __init__
taking fields by position or keyword with defaults (a Factory makes a fresh default
per instance), value equality, a readable repr, and for frozen records immutability
and a hash (fields named in `unhashed` left out of it).
"""

__all__ = ["Factory", "as_dict", "from_dict", "value_class"]


class Factory:
    """A default made anew for each instance, as dataclasses' default_factory."""

    __slots__ = ("make",)

    def __init__(self, make):
        self.make = make


def value_class(cls=None, *, frozen: bool = False, unhashed: tuple = (), keywords: bool = False):
    """Make `cls` (its annotated fields, with their defaults) a value class: see the module.
    `keywords`: its fields can only be given by name (records of many fields of one type,
    where `Release("br0", True, False, None, True)` says nothing to a reader)."""
    def wrap(cls):
        names = tuple(cls.__dict__.get("__annotations__", {}))
        defaults = {n: cls.__dict__[n] for n in names if n in cls.__dict__}
        for n, value in defaults.items():
            if isinstance(value, Factory):
                delattr(cls, n)
        hashed = tuple(n for n in names if n not in unhashed)
        values_of, hashed_of = _getter(names), _getter(hashed)  # C-level: records are compared and hashed in bulk

        def __init__(self, *args, **kwargs):
            if args and keywords:
                raise TypeError(f"{cls.__name__}() takes its fields by name only")
            if not kwargs and len(args) == len(names):
                self.__dict__.update(zip(names, args))
                return
            if len(args) > len(names):
                raise TypeError(f"{cls.__name__}() takes {len(names)} positional arguments, {len(args)} given")
            values = dict(zip(names, args))
            for key, value in kwargs.items():
                if key not in names or key in values:
                    raise TypeError(f"{cls.__name__}() got an unexpected or repeated argument {key!r}")
                values[key] = value
            for n in names:
                if n not in values:
                    if n not in defaults:
                        raise TypeError(f"{cls.__name__}() missing argument {n!r}")
                    default = defaults[n]
                    values[n] = default.make() if isinstance(default, Factory) else default
                object.__setattr__(self, n, values[n])

        def __eq__(self, other):
            if other.__class__ is not self.__class__:
                return NotImplemented
            return values_of(self) == values_of(other)

        def __repr__(self):
            return f"{cls.__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"

        cls.__init__, cls.__eq__, cls.__repr__ = __init__, __eq__, __repr__
        cls.__record_fields__ = names
        cls.__record_plain_defaults__ = {n: v for n, v in defaults.items() if not isinstance(v, Factory)}
        cls.__record_name_set__ = frozenset(names)
        if frozen:
            def __setattr__(self, name, value):
                raise AttributeError(f"{cls.__name__} is frozen: cannot assign {name!r}")

            def __hash__(self):
                return hash(hashed_of(self))

            cls.__setattr__, cls.__delattr__, cls.__hash__ = __setattr__, __setattr__, __hash__
        else:
            cls.__hash__ = None
        return cls

    return wrap if cls is None else wrap(cls)


def _getter(names: tuple):
    """A function returning the tuple of `names`' values of an object."""
    from operator import attrgetter

    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda obj: (one(obj),)
    return attrgetter(*names) if names else (lambda obj: ())


def as_dict(obj) -> dict:
    """The record's fields by name (values as they are)."""
    return {n: getattr(obj, n) for n in obj.__record_fields__}


def replace(obj, **changes):
    """A copy of the record `obj` with `changes` applied (its other fields as they are)."""
    return from_dict(type(obj), {**as_dict(obj), **changes})


def from_dict(cls, values: dict):
    """An instance from a dict of field values, without __init__'s argument handling: for
    trusted data read in bulk (the registry). Unknown fields raise TypeError; missing ones
    take their plain default (a field without one raises TypeError too)."""
    names = cls.__record_name_set__
    if not values.keys() <= names:
        raise TypeError(f"{cls.__name__}: unknown fields {sorted(values.keys() - names)}")
    obj = object.__new__(cls)
    fields = obj.__dict__
    fields.update(cls.__record_plain_defaults__)
    fields.update(values)
    if len(fields) != len(names):
        raise TypeError(f"{cls.__name__}: missing fields {sorted(names - fields.keys())}")
    return obj
