"""`# Copied from` markers: every marked copy must still equal its source, after the renames.

Each model file is complete on its own, so blocks shared with bert.py are copied, not
imported, under a marker on the line directly above them (HF's `make fix-copies` convention):

    # Copied from bert.BertSelfAttention with Bert->Roberta
    class RobertaSelfAttention(nn.Module):
        ...

MODULE.NAME names a class, a function or a module-level assignment in MODULE.py (a dotted NAME
such as bert.BertConfig.from_dict names a method, bert.BertConfig.unpad a field). The copy is
the statement under the marker (decorators included), up to its last line. NAME..LAST names a
run of statements in one body, from NAME to the statement defining LAST, the comments between
them included (e.g. bert.BertConfig.num_labels..ffn_type, a block of config fields); the copy
runs from the statement under the marker to the one defining LAST (after the renames).

`with Old->New,Old2->New2` renames are plain, case-sensitive string replacements applied in
order; the part is optional. A comma inside parentheses or brackets belongs to its rename, so
that shape comments can follow: `with (B, T, H)->(B, T, E)`. A marker line that ends with a
comma goes on in the comment line below it:

    # Copied from bert.BertForPreTraining.forward with bert->albert,nsp->sop,
    #     next_sentence->sentence_order

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
    name: str           # source name in it, e.g. "BertSelfAttention", "BertConfig.from_dict" or "BertConfig.a..b"
    renames: list       # [(old, new), ...], applied in order
    end: int = 0        # 1-based last line of the marker (it may go on over comment lines); 0 = `line`

    @property
    def where(self):
        return f"{self.file.name}:{self.line}"

    @property
    def last(self):
        """The name that ends a NAME..LAST run in the copy (renamed), or None for a single statement."""
        last = self.name.partition("..")[2] or None
        for old, new in self.renames if last else ():
            last = last.replace(old, new)
        return last

    def __str__(self):
        return f"{self.where} {self.module}.{self.name}"


def _split_renames(text):
    """Split at the commas outside parentheses and brackets: `(B, T, H)->(B, T, E)` is one rename."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def _parse_renames(text, where):
    renames = []
    for pair in _split_renames(text or ""):
        if not pair.strip():
            continue
        if "->" not in pair:
            raise CopyError(f"{where}: rename {pair.strip()!r} is not of the form Old->New")
        old, new = (s.strip() for s in pair.split("->", 1))
        if "->" in new:
            raise CopyError(f"{where}: rename {pair.strip()!r} holds two '->': a comma inside unclosed "
                            "parentheses or brackets does not separate renames")
        renames.append((old, new))
    return renames


def find_copies(root=ROOT, files=MODEL_FILES):
    """Every `# Copied from` marker in the model files under `root` that exist, in file order."""
    copies = []
    for name in files:
        path = Path(root) / name
        if not path.is_file():
            continue
        lines = path.read_text().splitlines()
        for i, text in enumerate(lines):
            if not text.lstrip().startswith("# Copied from"):
                continue
            end = i                                         # a marker ending with a comma goes on below
            while (text.rstrip().endswith(",") and end + 1 < len(lines) and lines[end + 1].lstrip().startswith("#")
                   and not lines[end + 1].lstrip().startswith("# Copied from")):
                end += 1
                text = text.rstrip() + lines[end].lstrip()[1:].strip()
            m = MARKER.match(text)
            where = f"{path.name}:{i + 1}"
            if m is None:
                raise CopyError(f"{where}: malformed marker {text.strip()!r}; "
                                "expected '# Copied from MODULE.NAME[..LAST] [with Old->New,...]'")
            if m["name"].count("..") > 1 or "." in m["name"].partition("..")[2] or m["name"].endswith(".."):
                raise CopyError(f"{where}: malformed range {m['name']!r}; expected NAME..LAST, LAST a plain name")
            copies.append(Copy(path, i + 1, m["module"], m["name"], _parse_renames(m["renames"], where), end + 1))
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


def _dedented(lines, node, last=None):
    """The lines of node (decorators included) up to those of `last` (default: node), with node's
    indentation removed."""
    n, last = node.col_offset, last or node
    return "".join((line[n:] if not line[:n].strip() else line) + "\n"
                   for line in lines[_start(node) - 1:last.end_lineno])


def _run_end(body, i, last, what):
    """The statement of body, from body[i] on, that defines `last`: the end of a NAME..LAST run."""
    end = next((n for n in body[i:] if _defines(n, last)), None)
    if end is None:
        raise CopyError(f"{what}: no {last!r} after it in the same body, where its NAME..LAST run should end")
    return end


def source_of(root, module, name):
    """The text of MODULE.NAME, or of the run MODULE.NAME..LAST (dedented), found with ast in root/MODULE.py."""
    path = Path(root) / f"{module}.py"
    if not path.is_file():
        raise CopyError(f"no {path.name} in {root}")
    text = path.read_text()
    body = _parse(text, path.name).body
    first, _, last = name.partition("..")
    node, i = None, 0
    for part in first.split("."):
        i = next((j for j, n in enumerate(body) if _defines(n, part)), None)
        if i is None:
            raise CopyError(f"{module}.{name} not found: {path.name} defines no {part!r} there")
        node, outer, body = body[i], body, getattr(body[i], "body", [])
    end = _run_end(outer, i, last, f"{module}.{name} not found: {path.name}'s {first}") if last else None
    return _dedented(text.splitlines(), node, end)


def _block_under(copy):
    """(first line, last line, indent) of the statement (or NAME..LAST run) directly below the marker, 1-based."""
    text = copy.file.read_text()
    below = (copy.end or copy.line) + 1
    for node in ast.walk(_parse(text, copy.file.name)):
        for body in (getattr(node, f, None) for f in ("body", "orelse", "finalbody")):
            if not isinstance(body, list):
                continue
            i = next((j for j, n in enumerate(body) if isinstance(n, ast.stmt) and _start(n) == below), None)
            if i is not None:
                end = _run_end(body, i, copy.last, f"{copy.where}: the statement under the marker") if copy.last else body[i]
                return _start(body[i]), end.end_lineno, body[i].col_offset
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


class FooConfig:
    size: int = 2
    fast: bool = False        # (B, T, H) or (total, H)
    # wide or narrow
    wide: bool = True
    after: int = 0


def foo_shape(x):
    return x.view(2, -1)      # (B, T, H)
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


class BarConfig:
    size: int = 3
    # Copied from base.FooConfig.fast..wide with (B, T, H) or (total, H)->(B, T, E) or (total, E)
    fast: bool = False        # (B, T, E) or (total, E)
    # wide or narrow
    wide: bool = True
    after: int = 1


# Copied from base.foo_shape with foo->bar,
#     (B, T, H)->(N, H)
def bar_shape(x):
    return x.view(2, -1)      # (N, H)
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
        (18, "FooBlock.forward", []), (23, "SIZES", []),
        (29, "FooConfig.fast..wide", [("(B, T, H) or (total, H)", "(B, T, E) or (total, E)")]),
        (36, "foo_shape", [("foo", "bar"), ("(B, T, H)", "(N, H)")])]
    assert copies[-1].end == 37                   # the marker goes on over the comment line below it
    assert check(tmp_path) == []
    assert copied_lines(tmp_path) == {"bert.py": 5 + 2 + 2 + 1 + 3 + 2}


@pytest.mark.parametrize("old, new, drifted_name", [
    ('"""A Bar block."""', '"""A Bar block, edited by hand."""', "FooBlock"),
    ("return BarBlock()(x)", "return BarBlock()(x) + 1", "foo_helper"),
    ("    def forward(self, x):\n        return x * 2          # (B, T, H)\n\n\n# Copied from base.SIZES",
     "    def forward(self, x):\n        return x * 2\n\n\n# Copied from base.SIZES", "FooBlock.forward"),
    ('SIZES = {"foo": 1}', 'SIZES = {"foo": 2}', "SIZES"),
    ("    # wide or narrow\n", "    # wide or thin\n", "FooConfig.fast..wide"),          # a comment inside a run
    ("    fast: bool = False        # (B, T, E) or (total, E)", "    fast: bool = False        # (B, T, E)",
     "FooConfig.fast..wide"),
    ("return x.view(2, -1)      # (N, H)", "return x.view(2, -1)      # (B, T, H)", "foo_shape"),   # renamed below
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
    write_pair(tmp_path, COPY.replace("with Foo->Bar\n", "with Foo(->Bar(,x->y\n"))
    with pytest.raises(CopyError, match=r"bert.py:4: rename 'Foo\(->Bar\(,x->y' holds two '->'"):
        find_copies(tmp_path)


def test_a_run_of_statements_must_end_where_it_says(tmp_path):
    write_pair(tmp_path, COPY.replace("base.FooConfig.fast..wide", "base.FooConfig.fast..wider"))
    with pytest.raises(CopyError, match=r"bert.py:29: base.FooConfig.fast..wider not found: base.py's FooConfig.fast: "
                                        "no 'wider' after it"):
        check(tmp_path)
    write_pair(tmp_path, COPY.replace("    wide: bool = True\n    after: int = 1", "    after: int = 1"))
    with pytest.raises(CopyError, match=r"bert.py:29: the statement under the marker: no 'wide' after it"):
        check(tmp_path)
    write_pair(tmp_path, COPY.replace("base.FooConfig.fast..wide", "base.FooConfig.fast..wide.x"))
    with pytest.raises(CopyError, match=r"bert.py:29: malformed range 'FooConfig.fast..wide.x'"):
        find_copies(tmp_path)


if __name__ == "__main__":
    sys.exit(main())
