"""Pydantic building blocks for settings read from YAML: strict field types, value rules, and a
ValidationError told as one line that names the dotted key, the value and what is allowed
(:func:`one_line`). Used by :mod:`limbscan.config`; imports nothing of limbscan.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictInt,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    model_validator,
)
from pydantic_core import PydanticCustomError

# The validation context key that says the values come from YAML text. PyYAML's safe_load (YAML
# 1.1) leaves ``1e-3`` and ``1e3`` strings (its float pattern needs a dot); from text, a number
# field takes such a string, from Python it does not.
FROM_TEXT = "from_text"
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _number(value: Any, info: ValidationInfo) -> Any:
    """An int (kept an int, so a saved config reads as it was written) or a float, never a bool."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and (info.context or {}).get(FROM_TEXT) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    raise PydanticCustomError("number_type", "not a number")


def _list(value: Any) -> Any:
    if not isinstance(value, (list, tuple)):  # pydantic's lax tuple would take a set, say
        raise PydanticCustomError("list_type", "not a list")
    return value


def _str_keys(value: Any) -> Any:
    if isinstance(value, dict) and not all(isinstance(k, str) for k in value):
        raise PydanticCustomError("mapping_type", "not a mapping with string keys")
    return value


LIST = BeforeValidator(_list)  # a tuple field: a list or tuple only
STR_KEYS = BeforeValidator(_str_keys)  # a dict field: string keys only


def rule(ok: Callable[[Any], bool], text: str, show: Callable[[Any], Any] = lambda v: v) -> AfterValidator:
    """A check of a valid value; its error reads ``<key> <show(value)> must be <text>``."""

    def check(value: Any) -> Any:
        if not ok(value):
            raise PydanticCustomError("rule", "must be {rule}", {"rule": text, "value": show(value)})
        return value

    return AfterValidator(check)


def whole_error(text: str, verbatim: bool = False) -> PydanticCustomError:
    """An error about a whole model, read ``<model key> <text>``; ``verbatim``: the message as is."""
    return PydanticCustomError("verbatim" if verbatim else "sentence", "{text}", {"text": text})


# Constraints on a Number go in Annotated, after it: ``Field(default, ge=0)`` would put them on
# the float schema that the PlainValidator replaces, and they would never run.
Number = Annotated[float, PlainValidator(_number)]
PositiveNumber = Annotated[Number, Field(gt=0)]
NonNegativeNumber = Annotated[Number, Field(ge=0)]
PositiveInt = Annotated[StrictInt, Field(gt=0)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
Probability = Annotated[Number, rule(lambda p: 0 <= p <= 1, "a probability in [0, 1]")]
Fraction = Annotated[Number, rule(lambda f: 0 <= f <= 1, "a fraction in [0, 1]")]
Span = Annotated[tuple[Number, Number], LIST, rule(lambda r: 0 < r[0] <= r[1], "0 < low <= high")]
Span0 = Annotated[tuple[Number, Number], LIST, rule(lambda r: 0 <= r[0] <= r[1], "0 <= low <= high")]


class Checked(BaseModel):
    """A model of settings: unknown keys are refused; assignment is not checked (validate again
    after changing one). Checks across fields go in ``_check_across`` (raise :func:`whole_error`).
    Built in Python (validated without a context), its errors reach the caller as
    ``cls._failed(err)``, which a subclass makes its own exception."""

    model_config = ConfigDict(extra="forbid")

    def _check_across(self) -> None:
        """Checks that span fields, run once each field is valid."""

    @classmethod
    def _failed(cls, err: ValidationError) -> Exception:
        return err

    @model_validator(mode="after")
    def _across(self) -> Any:
        self._check_across()
        return self

    @model_validator(mode="wrap")  # defined after _across, so it wraps that too
    @classmethod
    def _built_in_python(cls, values: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        if info.context is not None:  # validated with a context: the caller reads the errors
            return handler(values)
        try:
            return handler(values)
        except ValidationError as err:
            raise cls._failed(err) from None


def _bare(hint: Any) -> Any:
    while get_origin(hint) is Annotated:
        hint = get_args(hint)[0]
    return hint


def _hint_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The declared type at ``loc`` (a pydantic error's location) under the model ``cls``."""
    hint: Any = cls
    for part in loc:
        hint = _bare(hint)
        if isinstance(hint, type) and issubclass(hint, BaseModel):
            hint = hint.model_fields[part].annotation
        elif get_origin(hint) in (dict, tuple):
            args = get_args(hint)
            hint = args[-1] if get_origin(hint) is dict else args[0] if args[-1] is Ellipsis else args[part]
        else:  # X | None
            (hint,) = [a for a in get_args(hint) if a is not type(None)]
    return _bare(hint)


def _type_name(hint: Any) -> str:
    args = get_args(hint)
    if type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return f"{_type_name(_bare(inner))} or null"
    if get_origin(hint) is tuple:
        each = _type_name(_bare(args[0]))
        return f"a list, each {each}" if args[-1] is Ellipsis else f"a list of {len(args)} values, each {each}"
    if get_origin(hint) is dict:
        return "a mapping"
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(hint, str(hint))


_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="),
           "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}
_VALUE_ERRORS = {"rule", "sentence", "verbatim", *_BOUNDS}


def _rank(error: Any) -> int:
    """Which of several errors to tell: an unknown key, then a type, then a value."""
    return 0 if error["type"] == "extra_forbidden" else 2 if error["type"] in _VALUE_ERRORS else 1


def one_line(err: ValidationError, cls: type[BaseModel], where: str = "") -> str:
    """The first of ``err``'s errors (validating ``cls``, which sits at the dotted key ``where``) as
    ``<key> <value> must be <what is allowed>``, or ``unknown key <key> (known: ...)``."""
    error = min(err.errors(), key=_rank)
    kind, loc, value, ctx = error["type"], error["loc"], error["input"], error.get("ctx") or {}
    key = where
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else str(part)
    if kind == "verbatim":
        return ctx["text"]
    if kind == "sentence":
        return f"{key} {ctx['text']}"
    if kind == "rule":
        return f"{key} {ctx['value']!r} must be {ctx['rule']}"
    if kind in _BOUNDS:
        bound, sign = _BOUNDS[kind]
        shown = float(value) if isinstance(value, str) else value  # a number read from YAML text
        return f"{key} {shown!r} must be {sign} {ctx[bound]}"
    if kind == "extra_forbidden":
        return f"unknown key {key} (known: {', '.join(sorted(_hint_at(cls, loc[:-1]).model_fields))})"
    hint = _hint_at(cls, loc)
    if kind == "literal_error":
        return f"{key} {value!r} is not one of {', '.join(map(str, get_args(hint)))}"
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return f"{key or 'top level'} must be a mapping, got {value!r}"
    return f"{key} {value!r} must be {_type_name(hint)}"
