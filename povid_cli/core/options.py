"""Options declared once, on a config dataclass: the CLI, povid.toml, validation and the manifest come from it.

    @dataclass(frozen=True)
    class ShoutConfig(Options):
        suffix: str = opt("!", "What to append to every answer.")
        times: int = opt(1, "How often.", min=1, max=10)
        api: APIConfig = group(APIConfig)        # nested: flat flags (--api-base), a [stage.api] table

Each `opt` carries the type (from the annotation), the default, the help, whether it changes the
stage's output (`hash`), its range and choices, and how it looks on the command line (flag, short
flag, help panel). From that:
- `Options.__post_init__` checks every value (type, range, choices): a bad value from a flag, a
  povid.toml key or Python code is the same one-line `OptionError`, never a crash later;
- `typer_parameters(cls)` gives the typer options of a command, `from_flags(cls, values)` builds the
  config from what typer parsed;
- `from_table(cls, table, where)` builds it from a povid.toml table, `toml_lines(cls)` documents it;
- `hashed(config)` is what goes into the stage's config hash (fields with hash=False are left out).
Plain frozen dataclasses (tests, plug-ins) work too: every field is hashed, none is on the CLI.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, Callable

from povid_cli.core.errors import UsageError


class OptionError(UsageError):
    """A bad option value. `name` is the field; the caller says where it came from (a flag, a TOML key)."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name} {problem}")
        self.name = name
        self.problem = problem


def opt(default: Any = MISSING, help: str = "", *, hash: bool = True, min: float | None = None,
        max: float | None = None, choices: tuple | Callable[[], tuple] | None = None, flag: str | None = None,
        short: str | None = None, invert: str | None = None, panel: str | None = None, cli: bool = True,
        metavar: str | None = None, sep: str | None = None, factory: Callable[[], Any] | None = None) -> Any:
    """A config field. `invert`: a bool shown as this flag, which sets the field to False
    (`drop_refusals` = True is `--keep-refusals`). `cli=False`: povid.toml and Python only. `sep`: a list
    option whose flag values are also split on it (`--benchmarks chair,pope`)."""
    md = {"help": help, "hash": hash, "min": min, "max": max, "choices": choices, "flag": flag, "short": short,
          "invert": invert, "panel": panel, "cli": cli, "metavar": metavar, "sep": sep}
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


def group(cls: type, help: str = "", panel: str | None = None, factory: Callable[[], Any] | None = None) -> Any:
    """A nested Options class: its fields become flat flags and a [section.name] table. `factory` gives
    other defaults (sample's API timeout is longer)."""
    return field(default_factory=factory or cls, metadata={"group": True, "help": help, "panel": panel, "hash": True})


class Options:
    """Base of every config dataclass with `opt` fields: values are checked when it is made."""

    def __post_init__(self) -> None:
        for spec in specs(type(self), nested=False):
            value = getattr(self, spec.name)
            if spec.group:
                continue
            object.__setattr__(self, spec.name, check(spec, value))


@dataclass(frozen=True)
class Spec:
    """One option, resolved from a dataclass field."""

    name: str
    type: Any                  # int | float | str | bool | tuple (of str)
    optional: bool
    default: Any
    help: str
    hash: bool
    min: float | None
    max: float | None
    choices: Any
    flag: str | None
    short: str | None
    invert: str | None
    panel: str | None
    cli: bool
    metavar: str | None
    sep: str | None = None
    group: type | None = None  # a nested Options class
    path: tuple[str, ...] = ()  # where it lives: ("api", "api_base") for a nested one

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def allowed(self) -> tuple | None:
        return self.choices() if callable(self.choices) else self.choices


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return MISSING


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(int | float | str | bool | tuple | a dataclass | Any, optional?) from a type hint."""
    optional = False
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0] if len(args) == 1 else Any
        origin = typing.get_origin(hint)
    if origin in (tuple, list):
        return tuple, optional
    return (hint if hint in (int, float, str, bool) or dataclasses.is_dataclass(hint) else Any), optional


def specs(cls: type, nested: bool = True, _path: tuple[str, ...] = (), _defaults: Any = None) -> list[Spec]:
    """The options of a config class, nested groups flattened (their `path` says where they live; their
    defaults are those of the group's factory, e.g. sample's longer API timeout)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        md = f.metadata or {}
        typ, optional = _base_type(hints.get(f.name, Any))
        if md.get("group"):
            if nested:
                out += specs(typ, True, _path + (f.name,), _default(f))
            else:
                out.append(Spec(f.name, typ, False, None, md.get("help", ""), True, None, None, None, None, None, None,
                                md.get("panel"), False, None, None, typ, _path + (f.name,)))
            continue
        default = getattr(_defaults, f.name) if _defaults is not None else _default(f)
        out.append(Spec(f.name, typ, optional, default, md.get("help", ""), md.get("hash", True), md.get("min"),
                        md.get("max"), md.get("choices"), md.get("flag"), md.get("short"), md.get("invert"),
                        md.get("panel"), md.get("cli", False) if md else False, md.get("metavar"), md.get("sep"),
                        None, _path + (f.name,)))
    return out


def check(spec: Spec, value: Any) -> Any:
    """The value, coerced to the option's type (TOML int -> float, list -> tuple); OptionError if it is wrong."""
    t = spec.type
    if value is None:
        if spec.optional or spec.default is None:
            return None
        raise OptionError(spec.name, "must be set")
    if t is bool and not isinstance(value, bool):
        raise OptionError(spec.name, f"must be true or false, got {value!r}")
    if t is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise OptionError(spec.name, f"must be an integer, got {value!r}")
    if t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(spec.name, f"must be a number, got {value!r}")
        value = float(value)
    if t is str and not isinstance(value, str):
        raise OptionError(spec.name, f"must be a string, got {value!r}")
    if t is tuple:
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise OptionError(spec.name, f"must be a list of strings, got {value!r}")
        value = tuple(value)
    if spec.min is not None and value < spec.min:
        raise OptionError(spec.name, f"must be at least {spec.min:g}, got {value!r}")
    if spec.max is not None and value > spec.max:
        raise OptionError(spec.name, f"must be at most {spec.max:g}, got {value!r}")
    allowed = spec.allowed()
    if allowed is not None:
        for v in value if isinstance(value, tuple) else (value,):
            if v not in allowed:
                raise OptionError(spec.name, f"must be one of {', '.join(map(str, allowed))}, got {v!r}")
    return value


def hashed(config: Any) -> dict:
    """The fields that change a stage's output (hash=False ones are left out; nested groups recurse and
    vanish when none of theirs counts, so adding an all-transport group changes no hash)."""
    out = {}
    for f in dataclasses.fields(config):
        if not (f.metadata or {}).get("hash", True):
            continue
        v = getattr(config, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            sub = hashed(v)
            if sub:
                out[f.name] = sub
            continue
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


# -- povid.toml -----------------------------------------------------------------------------------
def from_table(cls: type, table: dict, where: str) -> Any:
    """cls from a povid.toml table: unknown keys, wrong types and out-of-range values are one-line
    usage errors naming `[where] key`. Keys of a nested group may also be given flat."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(cls)
    top = {s.name: s for s in specs(cls, nested=False)}
    flat = {s.name: s for s in specs(cls)}
    kwargs: dict[str, Any] = {}
    groups: dict[str, dict] = {}
    for key, value in table.items():
        if key in top and top[key].group is not None:
            if not isinstance(value, dict):
                raise UsageError(f"[{where}] {key} must be a table ([{where}.{key}])")
            groups.setdefault(key, {}).update(value)
        elif key in top:
            kwargs[key] = value
        elif key in flat and len(flat[key].path) == 2:
            groups.setdefault(flat[key].path[0], {})[key] = value
        else:
            valid = ", ".join(s.name for s in top.values()) or "(none)"
            raise UsageError(f"[{where}] has no option {key!r}; valid options: {valid}")
    try:
        for key in list(kwargs):
            kwargs[key] = check(top[key], kwargs[key])  # plain dataclasses (plug-ins, tests) get checked too
        for name, values in groups.items():
            kwargs[name] = from_table(top[name].group, values, f"{where}.{name}")
        return cls(**kwargs)
    except OptionError as e:
        raise UsageError(f"[{where}] {e.name} {e.problem}") from None
    except (TypeError, ValueError) as e:
        raise UsageError(f"[{where}] {e}") from None


def _toml_value(v: Any) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a TOML basic string


def toml_lines(cls: type, section: str) -> list[str]:
    """Every option of cls commented out at its default, with its help; nested groups as sub-tables."""
    lines: list[str] = []
    nested = []
    for s in specs(cls, nested=False):
        if s.group is not None:
            nested.append(s)
            continue
        lines += toml_option(s.name, s.default, describe(s))
    for s in nested:
        lines += ["", f"[{section}.{s.name}]"] + toml_lines(s.group, f"{section}.{s.name}")
    return lines


def toml_option(name: str, default: Any, help: str) -> list[str]:
    lines = [f"# {help}"] if help else []
    shown = "<not set>" if default is None or default is MISSING else _toml_value(default)
    return lines + [f"# {name} = {shown}"]


def describe(s: Spec, ranges: bool = True) -> str:
    """The help, with the choices and the range (typer shows ranges itself: ranges=False there). Choices
    given as a function (backends: plug-ins join them) are not listed: asking for them means scanning the
    installed packages, which `--help` and every start-up would pay for; their help names the built-ins."""
    extra = []
    if s.choices is not None and not callable(s.choices):
        extra.append(" | ".join(map(str, s.choices)))
    if ranges and (s.min is not None or s.max is not None):
        extra.append(f"{'' if s.min is None else f'{s.min:g} <= '}value{'' if s.max is None else f' <= {s.max:g}'}")
    return s.help + (f" [{'; '.join(extra)}]" if extra else "")


# -- the command line ------------------------------------------------------------------------------
def typer_parameters(cls: type, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """Keyword parameters with typer Options for every CLI option of cls (nested ones flat)."""
    import typer

    params = []
    for s in specs(cls):
        if not s.cli or s.name in skip:
            continue
        kw: dict[str, Any] = {"help": _escape(describe(s, ranges=False)), "rich_help_panel": s.panel}
        if s.metavar:
            kw["metavar"] = s.metavar
        if s.type is bool:
            if s.invert:  # drop_refusals=True is shown as --keep-refusals
                decls, default = [s.invert], False
            elif s.default is False:
                decls, default = [s.option], False
            else:
                decls, default = [f"{s.option}/--no-{s.option[2:]}"], s.default
            typ = typing.Optional[bool] if s.default is None else bool
        else:
            decls = [s.option]
            typ = {tuple: list[str], int: int, float: float, str: str}.get(s.type, str)
            if s.min is not None:
                kw["min"] = s.min
            if s.max is not None:
                kw["max"] = s.max
            default = s.default
            if s.type is tuple:  # typer's default for a list stays None: "not given" keeps the dataclass default
                kw["show_default"] = (s.sep or ", ").join(s.default) if s.default else False
                default = None
            if s.optional or default is None:
                typ = typing.Optional[typ]
        if s.short:
            decls.append(s.short)
        if default is None and "show_default" not in kw:
            kw["show_default"] = False
        params.append(inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=typing.Annotated[typ, typer.Option(*decls, **kw)]))
    return params


def annotated(cls: type, name: str) -> Any:
    """The typer annotation of one option of cls, for a command that declares its own signature."""
    [p] = [p for p in typer_parameters(cls) if p.name == name]
    return p.annotation


def _escape(text: str) -> str:
    return text.replace("[", "\\[")  # rich markup: a literal [default: ...] must not be read as a tag


def from_flags(cls: type, values: dict, **overrides: Any) -> Any:
    """cls from what typer parsed (keyword names as in typer_parameters), plus any overrides."""
    kwargs: dict[str, Any] = {}
    nested: dict[str, dict] = {}
    for s in specs(cls):
        if s.name in overrides:
            v = overrides[s.name]
        elif s.name in values:
            v = values[s.name]
            if s.type is bool and s.invert:
                v = not v
            if s.type is tuple and v is None:
                continue  # not given: the dataclass default
            if isinstance(v, list):
                if s.sep:
                    v = [x.strip() for item in v for x in item.split(s.sep) if x.strip()]
                v = tuple(v)
        else:
            continue
        if len(s.path) == 2:
            nested.setdefault(s.path[0], {})[s.name] = v
        else:
            kwargs[s.name] = v
    top = {s.name: s for s in specs(cls, nested=False)}
    try:
        for name, vals in nested.items():
            kwargs[name] = top[name].group(**vals)
        return cls(**kwargs)
    except OptionError as e:
        flag = next((s.option for s in specs(cls) if s.name == e.name and s.cli), None)
        raise UsageError(f"{flag or e.name} {e.problem}") from None


def signature_command(fn: Callable, params: list[inspect.Parameter]) -> Callable:
    """A function that takes `params` (for typer to read) and calls fn(**kwargs)."""

    def command(**kwargs):
        return fn(**kwargs)

    command.__name__ = fn.__name__
    command.__doc__ = fn.__doc__
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command
