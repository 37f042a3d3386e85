"""Recipes: YAML files under `pipelines/` naming a method (`flow`) and its settings, typed.

A recipe's schema is the run settings (`RunSettings`: where the data goes, which engine, how it shards) plus
the settings dataclass of its method (`Method.settings`). Loading checks every key, of the YAML file and of
`--set key=value`, against those fields: an unknown key is an error that names the closest valid key, every
field can be set whether or not the YAML names it, and values are validated by the field's type (pydantic),
so `n=abc` fails with the key and the expected type. A `--set` value is read by its field's type: a string
field takes the text as it is (`glob=**/*.txt`), a list field takes `a,b` or `[a, b]`, anything else is read
as YAML. The resolved settings, code defaults included, are what the build records in the manifest.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import io
import json
import tokenize
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import TypeAdapter, ValidationError

from lendata.paths import check_name, project_root


class RecipeError(ValueError):
    pass


@dataclass
class RaySettings:
    address: str | None = None  # an existing cluster ("auto", "HOST:6379", "ray://HOST:10001"); none: start one
    num_cpus: float | None = None  # CPUs of a cluster started here (default: all)
    cpus_per_shard: float = 1  # CPUs Ray gives each shard (llama.cpp uses this many threads)
    gpus_per_shard: float = 0  # GPUs Ray gives each shard

    def __post_init__(self) -> None:
        for key in ("num_cpus", "cpus_per_shard", "gpus_per_shard"):
            n, least = getattr(self, key), 0 if key == "gpus_per_shard" else 1e-9
            if n is not None and n < least:
                raise ValueError(f"ray.{key} is {n!r}; it must be a positive number")


@dataclass
class RunSettings:
    """How a recipe runs, whatever its method (README "Recipes")."""

    flow: str  # the method: direct, agentwrite, self_lengthen, decompose, lveval
    dataset: str  # the dataset the version is committed to
    version: str = "auto"  # auto: reuse identical content, else bump the patch; or MAJOR.MINOR.PATCH
    engine: str = "llamacpp"  # llamacpp | openai | vllm
    engine_options: dict[str, Any] = field(default_factory=dict)  # passed to the engine: base_url, model, n_ctx
    runner: Literal["local", "ray"] = "local"  # where shards run
    shards: int = 1  # work cut into this many tasks; under runner: ray each is a Ray task
    ray: RaySettings = field(default_factory=RaySettings)  # the Ray cluster and each shard's resources
    max_quarantine_share: float = 0.5  # the build fails when more of its rows are quarantined
    summary_by: str | None = None  # print produced length per value of this column after the build
    license: str | None = None  # the dataset card's licence (`lendata push --license` overrides it)
    tags: tuple[str, ...] = ()  # Hub card tags besides the method's own

    def __post_init__(self) -> None:
        check_name(self.dataset, "dataset")  # a folder name: checked before anything is written under it
        if self.shards < 1:
            raise ValueError(f"shards is {self.shards!r}; it must be a whole number of at least 1")
        if not 0 <= self.max_quarantine_share <= 1:
            raise ValueError(f"max_quarantine_share is {self.max_quarantine_share}; it must be in [0, 1]")


@dataclass
class Recipe:
    """A loaded recipe: its run settings and its method's settings, both resolved."""

    name: str
    file: Path
    run: RunSettings
    settings: Any

    @property
    def method(self) -> Any:
        from lendata.methods import get

        return get(self.run.flow)

    @property
    def dataset(self) -> str:
        return self.run.dataset

    def resolved(self) -> dict[str, Any]:
        """Every setting, code defaults included, as the manifest records them."""
        return {**dataclasses.asdict(self.run), **dataclasses.asdict(self.settings)}

    def path(self, value: str) -> Path:
        """Input paths in a recipe are relative to the recipe file; on the command line, to the cwd. A URL
        (s3://, hf://, gs://, ...: lendata.remote) is returned as it is, as a `RemotePath`."""
        from lendata.inputs import RemotePath
        from lendata.remote import is_url

        if is_url(value):
            return RemotePath(value)  # type: ignore[return-value]
        p = Path(value).expanduser()
        if p.is_absolute() or p.exists():
            return p.resolve()
        return (self.file.parent / p).resolve()


def pipelines_dir() -> Path:
    local = Path.cwd() / "pipelines"
    return local if local.is_dir() else project_root() / "pipelines"


def available() -> list[str]:
    return sorted(p.stem for p in pipelines_dir().glob("*.yaml"))


def parse_sets(pairs: list[str]) -> dict[str, str]:
    """`key=value` pairs as given; values are read by their field's type when the recipe is loaded."""
    out = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise RecipeError(f"--set takes key=value, got {pair!r}")
        out[key.strip()] = value
    return out


# --- the fields of a settings dataclass -----------------------------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), optional  # noqa: UP007
    return hint, False


def _is_dataclass_type(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def _is_mapping(hint: Any) -> bool:
    hint, _ = _unwrap(hint)
    return hint is dict or typing.get_origin(hint) is dict or (
        typing.get_origin(hint) is typing.Union and any(_is_mapping(a) for a in typing.get_args(hint)))


def _is_text(hint: Any) -> bool:
    """A field whose value is text: a string, or a choice of strings."""
    hint, _ = _unwrap(hint)
    return hint is str or (typing.get_origin(hint) is Literal and all(isinstance(a, str) for a in
                                                                       typing.get_args(hint)))


def _is_sequence(hint: Any) -> bool:
    hint, _ = _unwrap(hint)
    return typing.get_origin(hint) in (tuple, list)


def keys(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every settable key of a settings dataclass (nested dataclasses as `a.b`) -> its type."""
    out: dict[str, Any] = {}
    for name, hint in _hints(cls).items():
        if name not in {f.name for f in dataclasses.fields(cls)}:
            continue
        out[prefix + name] = hint
        if _is_dataclass_type(_unwrap(hint)[0]):
            out.update(keys(_unwrap(hint)[0], prefix + name + "."))
    return out


def open_keys(cls: type) -> set[str]:
    """Mapping fields whose own keys are free-form (engine options, role overrides): any sub-key may be set."""
    return {k for k, hint in keys(cls).items() if _is_mapping(hint)}


_NULL = ("null", "~")


def _args(hint: Any) -> tuple[Any, ...]:
    """The members of a union (one member for a plain type)."""
    base, _ = _unwrap(hint)
    return typing.get_args(base) if typing.get_origin(base) is typing.Union else (base,)


def free_value(raw: str) -> Any:
    """A value whose key has no declared type (an engine option, a role override): JSON when it is JSON
    (`4096`, `true`, `null`, `0.5`), a YAML mapping or list when it starts with `{` or `[`, else the text as it
    is. Never YAML 1.1's readings of plain text: `0123` stays "0123" (not 83), `yes` stays "yes"."""
    try:
        return json.loads(raw)
    except ValueError:
        pass
    if raw.lstrip().startswith(("{", "[")):
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError:
            return raw
    return raw


def _unquoted(raw: str) -> str:
    """Text as given, without the quotes of a YAML-quoted string (`'*.txt'` reached us with its quotes when
    no shell removed them)."""
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            return raw
        return value if isinstance(value, str) else raw
    return raw


def read_value(raw: str, hint: Any, key: str = "value") -> Any:
    """A `--set` value by its field's type (see the module docstring)."""
    base, optional = _unwrap(hint)
    if raw.strip().lower() in _NULL:
        if optional:
            return None
        if _is_text(base):
            raise RecipeError(f"{key} cannot be null: it takes text")
    if _is_sequence(base):
        if raw.lstrip().startswith("["):
            return free_value(raw)
        return [part.strip() for part in raw.split(",") if part.strip()]
    members = _args(base)
    if any(_is_mapping(m) for m in members) and raw.lstrip().startswith("{"):
        return free_value(raw)
    if _is_text(base) or str in members:
        return _unquoted(raw)
    if all(m in (int, float, bool) for m in members):
        return raw  # pydantic reads numbers and booleans from text: `010` is 10, `1:30` an error
    return free_value(raw)


def help_lines(cls: type) -> dict[str, str]:
    """Each field's help: the comment on its line in the source (one place for the words)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        names = {f.name for f in dataclasses.fields(klass)}
        line_field: dict[int, str] = {}
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string in names:
                line_field.setdefault(tok.start[0], tok.string)
            elif tok.type == tokenize.COMMENT and tok.start[0] in line_field:
                out[line_field[tok.start[0]]] = tok.string.lstrip("# ").strip()
    return out


# --- loading --------------------------------------------------------------------------------------------


def _closest(key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean {near[0]!r}?" if near else ""


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c`; a part matches an existing key written as a number too (`iteration_roles: {2: ...}`)."""
    node = tree
    parts = dotted.split(".")
    for i, p in enumerate(parts):
        existing = next((k for k in node if str(k) == p), p)
        if i == len(parts) - 1:
            node[existing] = value
            return
        child = node.get(existing)
        if not isinstance(child, dict):
            child = {}
            node[existing] = child
        node = child


def _check_keys(tree: dict[str, Any], valid: dict[str, Any], free: set[str], where: str, prefix: str = "") -> None:
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if "." in str(k):  # `ray.address: x` in a file: pydantic would drop it silently
            head, rest = str(k).split(".", 1)
            raise RecipeError(f"{where}: key {key!r}: in a file, write nested keys as a mapping "
                              f"({head}: {{{rest}: ...}}); dotted keys are for --set")
        if key not in valid:
            raise RecipeError(f"{where}: unknown key {key!r}{_closest(key, list(valid))}; valid keys: "
                              f"{', '.join(valid)}")
        if isinstance(v, dict) and key not in free and _is_dataclass_type(_unwrap(valid[key])[0]):
            _check_keys(v, valid, free, where, key + ".")


def _reject_bools(tree: dict[str, Any], valid: dict[str, Any], where: str, prefix: str = "") -> None:
    """YAML's true/false where a number is expected is a mistake pydantic would read as 1/0."""
    for k, v in tree.items():
        key = f"{prefix}{k}"
        hint = valid.get(key)
        if isinstance(v, dict) and hint is not None and _is_dataclass_type(_unwrap(hint)[0]):
            _reject_bools(v, valid, where, key + ".")
        elif isinstance(v, bool) and hint is not None:
            base, _ = _unwrap(hint)
            allowed = typing.get_args(base) if typing.get_origin(base) is typing.Union else (base,)
            if bool not in allowed and any(a in (int, float) for a in allowed):
                raise RecipeError(f"{where}: {key} is {v!r}; it must be a number")


def _validate(cls: type, values: dict[str, Any], where: str) -> Any:
    try:
        return TypeAdapter(cls).validate_python(values)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"] if not isinstance(x, int) or len(err["loc"]) == 1)
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{loc + ': ' if loc else ''}{msg}{shown}")
        raise RecipeError(f"{where}: {'; '.join(problems)}") from None
    except (ValueError, TypeError) as e:
        raise RecipeError(f"{where}: {e}") from None


def _recipe_file(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if not (path.suffix in {".yaml", ".yml"} and path.is_file()):
        path = pipelines_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise RecipeError(f"unknown recipe {name_or_path!r}; available: {', '.join(available()) or 'none'}")
    return path


def _read(path: Path) -> tuple[dict[str, Any], Any]:
    """(the recipe file's mapping, its method)."""
    from lendata.methods import UnknownMethod, get

    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of settings, got {type(tree).__name__}")
    if "flow" not in tree:
        raise RecipeError(f"{path}: a recipe must name its `flow` (the method)")
    try:
        return tree, get(str(tree["flow"]))
    except UnknownMethod as e:
        raise RecipeError(f"{path}: {e}") from None


def load(name_or_path: str, sets: dict[str, Any] | None = None) -> Recipe:
    """The recipe with `sets` applied (`--set` text, or already-typed values from Python), checked and typed."""
    path = _recipe_file(name_or_path)
    tree, method = _read(path)
    run_keys, method_keys = keys(RunSettings), keys(method.settings)
    clash = set(run_keys) & set(method_keys)
    if clash:  # a method's field must not shadow a run setting: one key, one meaning
        raise RecipeError(f"method {method.name} redefines run settings {sorted(clash)}")
    valid = {**run_keys, **method_keys}
    free = open_keys(RunSettings) | open_keys(method.settings)
    _check_keys(tree, valid, free, str(path))
    tree = copy.deepcopy(tree)
    for key, value in (sets or {}).items():
        parts = key.split(".")
        if key not in valid and not any(".".join(parts[:i]) in free for i in range(1, len(parts))):
            raise RecipeError(f"unknown key {key!r} for recipe {path.stem}{_closest(key, list(valid))}; "
                              f"valid keys: {', '.join(valid)}")
        if isinstance(value, str):
            value = read_value(value, valid[key], key) if key in valid else free_value(value)
        _set_path(tree, key, value)
    _reject_bools(tree, valid, str(path))
    for key, hint in valid.items():  # `engine_options: null` in a file means no options, as it always did
        if "." not in key and key in tree and tree[key] is None and _is_mapping(hint) and not _unwrap(hint)[1]:
            tree[key] = {}
    run_values = {k: v for k, v in tree.items() if k in run_keys}
    method_values = {k: v for k, v in tree.items() if k in method_keys}
    run = _validate(RunSettings, run_values, f"{path}")
    settings = _validate(method.settings, method_values, f"{path} ({method.name} settings)")
    from lendata.remote import RemoteError, check_url

    for key in method.inputs:  # before anything records the recipe (Prefect's run parameters, the manifest)
        value = getattr(settings, key, None)
        try:
            check_url(str(value)) if isinstance(value, str) else None
        except RemoteError as e:
            raise RecipeError(f"{key}: {e}") from None
    return Recipe(name=path.stem, file=path, run=run, settings=settings)


def describe(name_or_path: str) -> list[dict[str, Any]]:
    """Each key of a recipe: its type, the code default, the recipe's value and one line of help."""
    path = _recipe_file(name_or_path)
    tree, method = _read(path)
    load(str(path))  # an invalid recipe is reported as such, not described
    rows = []
    for cls in (RunSettings, method.settings):
        helps = {**help_lines(cls), **{f"ray.{k}": v for k, v in help_lines(RaySettings).items()}}
        defaults = _defaults(cls)
        for key, hint in keys(cls).items():
            if _is_dataclass_type(_unwrap(hint)[0]):
                continue
            value: Any = tree
            for part in key.split("."):
                value = value.get(part, MISSING) if isinstance(value, dict) else MISSING
            rows.append({"key": key, "type": _type_name(hint), "default": defaults.get(key, MISSING),
                         "recipe": value, "help": helps.get(key) or _nested_help(cls, key)})
    return rows


MISSING = object()


def _nested_help(cls: type, key: str) -> str:
    if "." not in key:
        return ""
    head, rest = key.split(".", 1)
    sub = _unwrap(_hints(cls)[head])[0]
    return help_lines(sub).get(rest, "") if _is_dataclass_type(sub) else ""


def _defaults(cls: type, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            out[prefix + f.name] = MISSING
            continue
        if dataclasses.is_dataclass(value):
            out.update(_defaults(type(value), prefix + f.name + "."))
        else:
            out[prefix + f.name] = value
    return out


def _type_name(hint: Any) -> str:
    text = str(hint).replace("typing.", "")
    return text.replace("<class '", "").replace("'>", "")


def shown(value: Any) -> str:
    """A value as `lendata recipes` prints it."""
    if value is MISSING:
        return "—"
    return yaml.safe_dump(list(value) if isinstance(value, tuple) else value, default_flow_style=True,
                          allow_unicode=True).strip().removesuffix("...").strip()
