"""The documentation stays a front page plus docs/: short, linked, free of process narrative, and the code's
comments free of measurements (a timing belongs in docs/performance.md beside the command that reproduces it).

Each check is a plain scan of the committed files, so a regression names the file and the offending text."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 250

# Words that tell the history of the work instead of the state of the code: who did what in which session or
# on which branch, a commit hash given as the source of a figure, a "was X, now Y" account of a change.
STALE = {
    "a session's scope": re.compile(r"so far only|on this branch|this session|this round|once merged", re.I),
    "the people who did the work": re.compile(r"\bthe lead\b|\bre-runs? the table\b", re.I),
    "a figure from an older state": re.compile(
        r"review fix|at the time\b|half an hour earlier|earlier run|before this round", re.I
    ),
    "a commit hash as a source": re.compile(r"\bcommit\s+`?[0-9a-f]{7,40}\b|`[0-9a-f]{7,40}`"),
    "a 'was X, now Y' history": re.compile(r"\bwas\b[^\n;]{0,60}?,\s*now\b", re.I),
}

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)

# A measured duration or speed-up: an approximate ("~0.7 ms", "~2.5 s"), a decimal ("10.5 s", "0.6-0.8 s") or a
# millisecond figure, or "10x faster". A whole number of seconds ("a 3 s timeout", "SLURM's 90-120 s") is more
# often a setting than a measurement and is left alone.
_UNIT = r"\s?(?:ms|µs|s|sec|seconds|min|minutes)\b"
_RANGE = r"(?:\s*(?:-|–|to)\s*~?\d+(?:\.\d+)?)?"
TIMING = re.compile(
    rf"~\s?\d+(?:\.\d+)?{_RANGE}{_UNIT}"
    rf"|(?<![\w.])\d+\.\d+{_RANGE}{_UNIT}"
    rf"|(?<![\w.])\d+{_RANGE}\s?(?:ms|µs)\b"
    r"|\d+(?:\.\d+)?\s?[x×]\s+(?:faster|slower)"
)
CODE = [*sorted((REPO / "nanovlm").rglob("*.py")), REPO / "train.py", REPO / "sweep.py"]


def prose(page: Path) -> str:
    """The page without its fenced code blocks (commands and program output are not prose)."""
    return FENCE.sub("", page.read_text())


def test_readme_is_a_front_page() -> None:
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/ (limit {README_MAX_LINES})"


def test_no_process_narrative() -> None:
    found = [
        f"{page.relative_to(REPO)}: {kind}: {m.group()!r}"
        for page in PAGES
        for kind, pattern in STALE.items()
        for m in pattern.finditer(page.read_text())
    ]
    assert not found, "\n".join(found)


def test_stale_patterns_catch_the_phrases_they_are_for() -> None:
    """The scan above passes on a clean tree; these are the phrases it exists to catch."""
    samples = [
        "so far only cnn/mean/clip exists on this branch",
        "The lead re-runs the table once merged",
        "a full run half an hour earlier, before the review fixes",
        "(table in commit `ce205bb`: ...)",
        "the sweep was 33.6 s, now 28.6 s",
    ]
    for sample in samples:
        assert any(p.search(sample) for p in STALE.values()), sample
    assert not any(p.search("the embeddings before training, above after") for p in STALE.values())


def test_relative_links_resolve() -> None:
    missing = []
    for page in PAGES:
        for target in LINK.findall(prose(page)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
                continue  # a URL or an anchor on the same page
            if not (page.parent / target.split("#")[0]).exists():
                missing.append(f"{page.relative_to(REPO)} -> {target}")
    assert not missing, f"links to missing files: {missing}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(README.parent / t.split("#")[0]).resolve() for t in LINK.findall(prose(README))}
    unlinked = [str(page.relative_to(REPO)) for page in DOCS if page.resolve() not in linked]
    assert not unlinked, f"README.md does not link to {unlinked}"


def test_errors_table_sits_between_its_markers() -> None:
    """tests/ generates the errors table into docs/errors.md between these markers."""
    text = (REPO / "docs" / "errors.md").read_text()
    start, end = "<!-- errors-table:start -->", "<!-- errors-table:end -->"
    assert text.count(start) == 1 and text.count(end) == 1
    table = text[text.index(start) + len(start) : text.index(end)]
    assert table.strip().startswith("|"), "a markdown table must follow the start marker"


def comments_and_docstrings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring of a Python file."""
    source = path.read_text()
    texts = [
        (tok.start[0], tok.string)
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                texts.append((getattr(node, "lineno", 1), doc))
    return texts


def test_no_measurements_in_code_comments() -> None:
    found = [
        f"{path.relative_to(REPO)}:{line}: {m.group()!r}"
        for path in CODE
        for line, text in comments_and_docstrings(path)
        for m in TIMING.finditer(text)
    ]
    assert not found, f"measured timings in code comments (they belong in docs/performance.md): {found}"


def test_timing_pattern_catches_measurements() -> None:
    for sample in [
        "costs ~0.7 ms",
        "took 0.6 s",
        "10.5 s on 2 threads",
        "0.67-0.88 s",
        "~5-10 ms",
        "~10x faster",
        "60 ms",
    ]:
        assert TIMING.search(sample), sample
    for sample in [
        "every `every_s` seconds",
        "a 3x3 grid",
        "32x32 RGB",
        "version 2.5",
        "SLURM's 90-120 s",
        "a 3 s timeout",
    ]:
        assert not TIMING.search(sample), sample
