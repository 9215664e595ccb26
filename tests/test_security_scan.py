"""Nothing received is ever unpickled or evaluated: scan src/ for the ways that happens.

Fails on any hit of pickle, recv_pyobj, eval(, exec(, torch.load(, marshal in the
code of src/ (string literals included, so `__import__("pickle")` is caught; comments
and docstrings, which only talk about it, are not scanned). The scanner is tested on
synthetic text first, so a scan that finds nothing means something.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

FORBIDDEN = re.compile(
    r"\bpickle\b|\bcPickle\b|\brecv_pyobj\b|\bsend_pyobj\b|(?<![\w.])eval\s*\(|"
    r"(?<![\w.])exec\s*\(|\btorch\.load\s*\(|\bmarshal\b|\bdill\b|\bcloudpickle\b|"
    r"\bshelve\b|\bnp\.load\s*\([^)]*allow_pickle\s*=\s*True"
)

_STATEMENT_START = {tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT,
                    tokenize.ENCODING}


def code_only(text: str) -> str:
    """The source with comments and docstrings blanked out, line numbers kept."""
    lines = text.splitlines(keepends=True)
    previous = tokenize.ENCODING
    for tok in tokenize.tokenize(io.BytesIO(text.encode()).readline):
        docstring = tok.type == tokenize.STRING and previous in _STATEMENT_START
        if tok.type == tokenize.COMMENT or docstring:
            (r0, c0), (r1, c1) = tok.start, tok.end
            for r in range(r0, r1 + 1):
                line = lines[r - 1]
                a = c0 if r == r0 else 0
                b = c1 if r == r1 else len(line.rstrip("\n"))
                lines[r - 1] = line[:a] + " " * (b - a) + line[b:]
        if tok.type not in (tokenize.COMMENT, tokenize.NL):
            previous = tok.type
    return "".join(lines)


def hits(text: str) -> list[tuple[int, str]]:
    return [(n, line.strip()) for n, line in enumerate(code_only(text).splitlines(), 1)
            if FORBIDDEN.search(line)]


BAD = [
    "import pickle",
    "obj = sock.recv_pyobj()",
    "value = eval(text)",
    "exec (code)",
    "state = torch.load(buf)",
    "import marshal",
    "x = np.load(f, allow_pickle=True)",
    "from cloudpickle import loads",
    'mod = __import__("pickle")',
    'def f():\n    """doc"""\n    return eval(s)',
]
FINE = [
    "model.eval()",  # a method, not the builtin
    "self.executor(x)",
    "torch.loads_something = 1",
    "retrieval(x)",
    "np.load(f)",
    '"""Never pickle: the codec says so."""',
    "x = 1  # no eval( here, just a comment",
    'def f():\n    """Never unpickle or marshal anything."""\n    return 1',
]


def test_scanner_finds_what_it_must() -> None:
    for text in BAD:
        assert hits(text), f"scanner missed: {text!r}"
    for text in FINE:
        assert not hits(text), f"false alarm: {text!r}"


def test_source_never_unpickles_or_evaluates() -> None:
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20, "the scan found no source to scan"
    found = {str(p.relative_to(SRC)): h for p in files if (h := hits(p.read_text()))}
    assert found == {}, f"forbidden constructs in src/: {found}"
