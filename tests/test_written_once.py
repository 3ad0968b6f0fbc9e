"""Issue 19, "parameters resolved once": every choice list, default and range of a command is
written in one place (a parameter table), and the flags, help texts and the library's
dataclasses read it from there. These checks scan the source, so a duplicate written back
by hand fails them."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

from d2scale.cli.bench import SUITE
from d2scale.cli.main import build_parser
from d2scale.params import PARAMS, GraphConfig, SelectParams
from d2scale.vision.coresets import CoresetParams
from d2scale.vision.params import VISION
from d2scale.vision.prune import PruneParams
from d2scale.web.embed import EmbedParams
from d2scale.web.export import ExportParams
from d2scale.web.params import WEB

ROOT = Path(__file__).resolve().parents[1]
TABLES = {"PARAMS": PARAMS, "VISION": VISION, "WEB": WEB, "SUITE": SUITE}
CLI = ["cli/vision.py", "cli/web.py", "cli/bench.py", "cli/batch.py"]
# dataclass → the table its fields' defaults come from
DATACLASSES = {
    CoresetParams: VISION,
    PruneParams: {**VISION, "quoter": VISION["prune_quoter"],
                  "iterations": VISION["prune_iterations"]},
    EmbedParams: WEB,
    ExportParams: WEB,
    SelectParams: PARAMS,
    GraphConfig: PARAMS,
}  # fmt: skip


def _tree(path: str) -> ast.Module:
    return ast.parse((ROOT / path).read_text(), path)


def _source_files() -> list[str]:
    files = [*ROOT.glob("d2scale/**/*.py"), *ROOT.glob("cli/*.py"), ROOT / "benchmarks/__main__.py"]
    return [str(p.relative_to(ROOT)) for p in files]


def _literal(node: ast.AST) -> bool:
    """A value written out: a number or string, or a tuple/list/set/dict of them."""
    if isinstance(node, ast.Constant):
        return node.value is not None and not isinstance(node.value, bool)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_literal(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return True
    return isinstance(node, ast.UnaryOp) and _literal(node.operand)


@pytest.mark.parametrize("path", CLI)
def test_cli_flags_write_no_default_or_choices(path):
    """Flags take default= and choices= from a table, never as literals."""
    bad = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id",
                                                                             "")) in (
            "add_argument", "add_flag"):  # fmt: skip
            for kw in node.keywords:
                if kw.arg in ("default", "choices", "const") and _literal(kw.value):
                    bad.append(f"{path}:{node.lineno}: {kw.arg}={ast.unparse(kw.value)}")
    assert not bad, "\n".join(bad)


def _range_check(node: ast.AST) -> bool:
    """``value < 1`` and the like: a comparison with a number (not of a ``len()``)."""
    if not isinstance(node, ast.Compare):
        return False
    sides = [node.left, *node.comparators]
    number = any(isinstance(c, ast.Constant) and type(c.value) in (int, float) for c in sides)
    counted = any(isinstance(c, ast.Call) and getattr(c.func, "id", "") == "len" for c in sides)
    return number and not counted


@pytest.mark.parametrize("path", CLI)
def test_cli_checks_no_range_by_hand(path):
    """No range check in the CLI modules: ranges are the tables' (``int_type``,
    ``check_option``)."""
    bad = [f"{path}:{n.lineno}: {ast.unparse(n)}" for n in ast.walk(_tree(path)) if _range_check(n)]
    assert not bad, "\n".join(bad)


def test_help_texts_do_not_repeat_a_default():
    """A help string of the CLI modules never spells a table default ("(default 64)"): the
    help generator adds it."""
    texts = [n.value for path in CLI for n in ast.walk(_tree(path))
             if isinstance(n, ast.Constant) and isinstance(n.value, str)]  # fmt: skip
    bad = []
    for table in TABLES.values():
        for p in table.values():
            if p.default is None or isinstance(p.default, (bool, tuple)):
                continue
            pattern = re.compile(rf"default:? {re.escape(str(p.default))}(?![\w-])")
            bad += [f"{p.name}: {t!r}" for t in texts if pattern.search(t)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("cls", list(DATACLASSES), ids=lambda c: c.__name__)
def test_dataclass_defaults_come_from_the_table(cls):
    """A dataclass field with a table entry has no literal default in the source, and its
    default is the table's."""
    table = DATACLASSES[cls]
    path = cls.__module__.replace(".", "/") + ".py"
    body = next(n for n in ast.walk(_tree(path))
                if isinstance(n, ast.ClassDef) and n.name == cls.__name__).body  # fmt: skip
    bad = [f"{cls.__name__}.{n.target.id} = {ast.unparse(n.value)}" for n in body
           if isinstance(n, ast.AnnAssign) and n.value is not None and n.target.id in table
           and isinstance(n.value, ast.Constant)]  # fmt: skip
    assert not bad, "\n".join(bad)
    for f in dataclasses.fields(cls):
        if f.name in table and f.default is not dataclasses.MISSING:
            assert f.default == table[f.name].default, f.name


def _subparser(*names: str):
    parser = build_parser()
    for name in names:
        action = next(a for a in parser._actions if hasattr(a, "choices") and
                      isinstance(a.choices, dict) and name in a.choices)  # fmt: skip
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize(("command", "cls"), [
    (("vision", "select"), CoresetParams), (("vision", "prune"), PruneParams),
    (("vision", "experiment"), CoresetParams), (("embed",), EmbedParams),
    (("export",), ExportParams),
])  # fmt: skip
def test_flag_defaults_are_the_dataclass_defaults(command, cls):
    """What a command runs with when a flag is not given is the library's default."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING}  # fmt: skip
    checked = 0
    for action in _subparser(*command)._actions:
        if action.dest in defaults and action.option_strings:
            assert action.default == defaults[action.dest], (command, action.dest)
            checked += 1
    assert checked >= 2, command


def _string_tuples(path: str) -> list[tuple[int, frozenset[str]]]:
    """Every tuple/list/set literal of two or more strings in ``path``."""
    found = []
    for n in ast.walk(_tree(path)):
        if (
            isinstance(n, (ast.Tuple, ast.List, ast.Set))
            and len(n.elts) >= 2
            and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in n.elts)
        ):
            found.append((n.lineno, frozenset(e.value for e in n.elts)))
    return found


def test_each_choice_list_is_written_once():
    """No table's choice list is spelled out twice anywhere in the package, the CLI or the
    benchmark suite (``("sum", "product")`` once, then referred to by name)."""
    choice_lists = {frozenset(p.choices) for t in TABLES.values() for p in t.values()
                    if len(p.choices) >= 2}  # fmt: skip
    where: dict[frozenset, list[str]] = {}
    for path in _source_files():
        for line, items in _string_tuples(path):
            if items in choice_lists:
                where.setdefault(items, []).append(f"{path}:{line}")
    twice = {", ".join(sorted(k)): v for k, v in where.items() if len(v) > 1}
    assert not twice, twice


def test_graph_config_is_a_part_of_select_params():
    """GraphConfig names the graph's inputs among SelectParams's fields: same names, types and
    (table) defaults, so the two declarations cannot drift apart."""
    select = {f.name: f for f in dataclasses.fields(SelectParams)}
    for f in dataclasses.fields(GraphConfig):
        assert f.name in select, f.name
        assert (f.type, f.default) == (select[f.name].type, select[f.name].default), f.name


@pytest.mark.parametrize("cls", list(DATACLASSES), ids=lambda c: c.__name__)
def test_dataclass_checks_no_table_range_by_hand(cls):
    """A dataclass's methods compare no table parameter with a number (``self.strata < 1``):
    its range is checked by ``check_option`` against the table."""
    table = DATACLASSES[cls]
    path = cls.__module__.replace(".", "/") + ".py"
    body = next(n for n in ast.walk(_tree(path))
                if isinstance(n, ast.ClassDef) and n.name == cls.__name__)  # fmt: skip
    bad = []
    for n in ast.walk(body):
        if not _range_check(n):
            continue
        sides = (n.left, *n.comparators)
        attrs = [c.attr for c in sides if isinstance(c, ast.Attribute)
                 and getattr(c.value, "id", "") == "self"]  # fmt: skip
        if attrs and all(a in table for a in attrs):
            bad.append(f"{path}:{n.lineno}: {ast.unparse(n)}")
    assert not bad, "\n".join(bad)
