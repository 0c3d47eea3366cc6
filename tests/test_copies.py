"""`# Copied from` markers: every marked copy must still equal its source, after the renames.

Each model file is complete on its own, so blocks shared with bert.py are copied, not
imported, under a marker on the line directly above them (HF's `make fix-copies` convention):

    # Copied from bert.BertSelfAttention with Bert->Roberta
    class RobertaSelfAttention(nn.Module):
        ...

MODULE.NAME names a class, a function or a module-level assignment in MODULE.py (a dotted NAME
such as bert.BertConfig.from_dict names a method). `with Old->New,Old2->New2` renames are
plain, case-sensitive string replacements applied in order; the part is optional. The copy is
the statement under the marker (decorators included), up to its last line.

    python tests/test_copies.py          check every copy; print the drifted ones as diffs
    python tests/test_copies.py --fix    rewrite drifted copies from their sources
    python tests/test_copies.py --count  how many lines each model file copies
"""
import argparse
import ast
import difflib
import functools
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILES = ("bert.py", "roberta.py", "albert.py", "electra.py")
MARKER = re.compile(r"^(?P<indent>\s*)# Copied from (?P<module>\w+)\.(?P<name>[\w.]+)(?: with (?P<renames>.+?))?\s*$")


class CopyError(Exception):
    """A marker that cannot be checked: bad syntax, no block under it, or a source that is not there."""


@dataclass
class Copy:
    file: Path          # the file holding the marker
    line: int           # 1-based line of the marker
    module: str         # source module, e.g. "bert"
    name: str           # source name in it, e.g. "BertSelfAttention" or "BertConfig.from_dict"
    renames: list       # [(old, new), ...], applied in order

    @property
    def where(self):
        return f"{self.file.name}:{self.line}"

    def __str__(self):
        return f"{self.where} {self.module}.{self.name}"


def _parse_renames(text, where):
    renames = []
    for pair in (text or "").split(","):
        if not pair.strip():
            continue
        if "->" not in pair:
            raise CopyError(f"{where}: rename {pair.strip()!r} is not of the form Old->New")
        old, new = (s.strip() for s in pair.split("->", 1))
        renames.append((old, new))
    return renames


def find_copies(root=ROOT, files=MODEL_FILES):
    """Every `# Copied from` marker in the model files under `root` that exist, in file order."""
    copies = []
    for name in files:
        path = Path(root) / name
        if not path.is_file():
            continue
        for i, text in enumerate(path.read_text().splitlines(), start=1):
            if not text.lstrip().startswith("# Copied from"):
                continue
            m = MARKER.match(text)
            if m is None:
                raise CopyError(f"{path.name}:{i}: malformed marker {text.strip()!r}; "
                                "expected '# Copied from MODULE.NAME [with Old->New,...]'")
            copies.append(Copy(path, i, m["module"], m["name"], _parse_renames(m["renames"], f"{path.name}:{i}")))
    return copies


@functools.lru_cache(maxsize=32)
def _parse(text, filename):
    try:
        return ast.parse(text, filename)
    except SyntaxError as e:
        raise CopyError(f"{filename}:{e.lineno}: not valid Python ({e.msg})") from None


def _start(node):
    """First line of a statement, its decorators included."""
    return min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])


def _defines(node, name):
    if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return node.name == name
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    if isinstance(node, ast.AnnAssign):
        return isinstance(node.target, ast.Name) and node.target.id == name
    return False


def _dedented(lines, node):
    """The node's lines (decorators included), with the node's own indentation removed."""
    n = node.col_offset
    return "".join((line[n:] if not line[:n].strip() else line) + "\n"
                   for line in lines[_start(node) - 1:node.end_lineno])


def source_of(root, module, name):
    """The text of MODULE.NAME (dedented), found with ast in root/MODULE.py."""
    path = Path(root) / f"{module}.py"
    if not path.is_file():
        raise CopyError(f"no {path.name} in {root}")
    text = path.read_text()
    body = _parse(text, path.name).body
    node = None
    for part in name.split("."):
        node = next((n for n in body if _defines(n, part)), None)
        if node is None:
            raise CopyError(f"{module}.{name} not found: {path.name} defines no {part!r} there")
        body = getattr(node, "body", [])
    return _dedented(text.splitlines(), node)


def _block_under(copy):
    """(first line, last line, indent) of the statement directly below the marker, 1-based."""
    text = copy.file.read_text()
    for node in ast.walk(_parse(text, copy.file.name)):
        if isinstance(node, ast.stmt) and _start(node) == copy.line + 1:
            return _start(node), node.end_lineno, node.col_offset
    raise CopyError(f"{copy.where}: the marker is not directly above a class, def or assignment")


def expected_text(copy, root):
    """What the copied block should read: the source, renamed, at the copy's indentation."""
    try:
        text = source_of(root, copy.module, copy.name)
    except CopyError as e:
        raise CopyError(f"{copy.where}: {e}") from None
    for old, new in copy.renames:
        text = text.replace(old, new)
    _, _, indent = _block_under(copy)
    return "".join(" " * indent + line if line.strip() else line for line in text.splitlines(keepends=True))


def actual_text(copy):
    first, last, _ = _block_under(copy)
    return "\n".join(copy.file.read_text().splitlines()[first - 1:last]) + "\n"


def diff(copy, root=ROOT):
    """'' if the copy matches its source, else a unified diff (source-after-renames -> copy)."""
    want, got = expected_text(copy, root), actual_text(copy)
    if want == got:
        return ""
    return "".join(difflib.unified_diff(want.splitlines(keepends=True), got.splitlines(keepends=True),
                                        f"{copy.module}.{copy.name} (after renames)", copy.where))


def check(root=ROOT, files=MODEL_FILES):
    """[(copy, diff)] for every drifted copy."""
    return [(c, d) for c in find_copies(root, files) if (d := diff(c, root))]


def fix(root=ROOT, files=MODEL_FILES, report=lambda copy: None):
    """Rewrite every drifted copy from its source, calling report(copy) for each; returns them.

    Each pass rewrites a file's drifted copies bottom-up, so the markers above keep their line
    numbers; a copy of a copy picks up its source's fix on the next pass.
    """
    fixed = []
    for _ in range(10):
        drifted = check(root, files)
        if not drifted:
            return fixed
        for copy, _ in sorted(drifted, key=lambda cd: (str(cd[0].file), -cd[0].line)):
            first, last, _ = _block_under(copy)
            lines = copy.file.read_text().splitlines(keepends=True)
            lines[first - 1:last] = [expected_text(copy, root)]
            copy.file.write_text("".join(lines))
            fixed.append(copy)
            report(copy)
    raise CopyError("copies still drift after 10 passes: is a copy its own source, through a cycle?")


def copied_lines(root=ROOT, files=MODEL_FILES):
    """{file name: lines inside its `# Copied from` blocks}, the marker lines not counted."""
    lines = {}
    for copy in find_copies(root, files):
        first, last, _ = _block_under(copy)
        lines[copy.file.name] = lines.get(copy.file.name, 0) + last - first + 1
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fix", action="store_true", help="rewrite drifted copies from their sources")
    parser.add_argument("--count", action="store_true", help="print the copied lines per file (markers excluded)")
    parser.add_argument("--root", type=Path, default=ROOT, help="folder holding the model files")
    args = parser.parse_args(argv)
    try:
        if args.fix:
            fixed = fix(args.root, report=lambda copy: print(f"fixed {copy}"))
            print(f"{len(fixed)} copies rewritten" if fixed else "all copies match their sources")
            return 0
        if args.count:
            lines = copied_lines(args.root)
            print(", ".join(f"{name} {n}" for name, n in lines.items()) + f"; {sum(lines.values())} copied lines")
            return 0
        drifted = check(args.root)
    except CopyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for copy, d in drifted:
        print(f"{copy} has drifted from its source:\n{d}")
    if drifted:
        print(f"{len(drifted)} drifted copies; run `python tests/test_copies.py --fix` to rewrite them")
    return 1 if drifted else 0


# ----------------------------------------------------------------------------- tests

try:
    COPIES, FIND_ERROR = find_copies(), None
except CopyError as e:           # reported by the test below, not as a collection error
    COPIES, FIND_ERROR = [], str(e)


def test_model_files_have_copies():
    assert FIND_ERROR is None, FIND_ERROR
    assert any(c.file.name == "roberta.py" for c in COPIES), "roberta.py should copy its shared blocks from bert.py"


@pytest.mark.parametrize("copy", COPIES, ids=str)
def test_copy_matches_source(copy):
    d = diff(copy)
    assert not d, f"{copy} has drifted from its source:\n{d}\nrun `python tests/test_copies.py --fix`"


SOURCE = '''\
import torch


class FooBlock(torch.nn.Module):
    """A Foo block."""

    def forward(self, x):
        return x * 2          # (B, T, H)


def foo_helper(x):
    return FooBlock()(x)


SIZES = {"foo": 1}
'''

COPY = '''\
import torch


# Copied from base.FooBlock with Foo->Bar
class BarBlock(torch.nn.Module):
    """A Bar block."""

    def forward(self, x):
        return x * 2          # (B, T, H)


# Copied from base.foo_helper with Foo->Bar,foo->bar
def bar_helper(x):
    return BarBlock()(x)


class Holder:
    # Copied from base.FooBlock.forward
    def forward(self, x):
        return x * 2          # (B, T, H)


# Copied from base.SIZES
SIZES = {"foo": 1}
'''


def write_pair(tmp_path, copy_text):
    (tmp_path / "base.py").write_text(SOURCE)
    (tmp_path / "bert.py").write_text(copy_text)
    return tmp_path / "bert.py"


def test_checker_accepts_correct_copies(tmp_path):
    write_pair(tmp_path, COPY)
    copies = find_copies(tmp_path)
    assert [(c.line, c.name, c.renames) for c in copies] == [
        (4, "FooBlock", [("Foo", "Bar")]), (12, "foo_helper", [("Foo", "Bar"), ("foo", "bar")]),
        (18, "FooBlock.forward", []), (23, "SIZES", [])]
    assert check(tmp_path) == []


@pytest.mark.parametrize("old, new, drifted_name", [
    ('"""A Bar block."""', '"""A Bar block, edited by hand."""', "FooBlock"),
    ("return BarBlock()(x)", "return BarBlock()(x) + 1", "foo_helper"),
    ("    def forward(self, x):\n        return x * 2          # (B, T, H)\n\n\n# Copied from base.SIZES",
     "    def forward(self, x):\n        return x * 2\n\n\n# Copied from base.SIZES", "FooBlock.forward"),
    ('SIZES = {"foo": 1}', 'SIZES = {"foo": 2}', "SIZES"),
])
def test_checker_detects_and_fixes_drift(tmp_path, capsys, old, new, drifted_name):
    assert COPY.count(old) == 1
    path = write_pair(tmp_path, COPY.replace(old, new))
    drifted = check(tmp_path)
    assert [c.name for c, _ in drifted] == [drifted_name]
    copy, d = drifted[0]
    assert d.startswith("---") and "bert.py:" in d
    assert any(line.startswith("+") and not line.startswith("+++") for line in d.splitlines())
    assert main(["--root", str(tmp_path)]) == 1
    assert f"bert.py:{copy.line} base.{drifted_name} has drifted" in capsys.readouterr().out
    assert main(["--root", str(tmp_path), "--fix"]) == 0
    assert f"fixed bert.py:{copy.line} base.{drifted_name}" in capsys.readouterr().out
    assert path.read_text() == COPY and check(tmp_path) == []


def test_fix_handles_a_block_of_another_length(tmp_path):
    path = write_pair(tmp_path, COPY.replace('    """A Bar block."""\n\n', ""))
    assert [c.name for c in fix(tmp_path)] == ["FooBlock"]
    assert path.read_text() == COPY


def test_missing_source_or_block_fails_clearly(tmp_path, capsys):
    write_pair(tmp_path, COPY.replace("base.foo_helper", "base.no_such_helper"))
    with pytest.raises(CopyError, match=r"bert.py:12: base.no_such_helper not found: base.py defines no 'no_such_h"):
        check(tmp_path)
    drifted_too = COPY.replace('"""A Bar block."""', '"""Edited."""')       # --fix must not touch it either
    path = write_pair(tmp_path, drifted_too.replace("# Copied from base.SIZES", "# Copied from nowhere.SIZES"))
    with pytest.raises(CopyError, match=r"bert.py:23: no nowhere.py in "):
        check(tmp_path)
    before = path.read_text()
    assert main(["--root", str(tmp_path)]) == 1 and main(["--root", str(tmp_path), "--fix"]) == 1
    assert path.read_text() == before                         # nothing is rewritten while a marker is broken
    assert "error: bert.py:23: no nowhere.py" in capsys.readouterr().err
    write_pair(tmp_path, COPY.replace("with Foo->Bar\n", "with Foo=Bar\n"))
    with pytest.raises(CopyError, match=r"bert.py:4: rename 'Foo=Bar' is not of the form Old->New"):
        find_copies(tmp_path)
    write_pair(tmp_path, COPY.replace("# Copied from base.SIZES\n", "# Copied from base.SIZES\n\n"))
    with pytest.raises(CopyError, match=r"bert.py:23: the marker is not directly above"):
        check(tmp_path)


if __name__ == "__main__":
    sys.exit(main())
