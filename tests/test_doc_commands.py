"""Every shell command in README.md and docs/*.md runs as written, or says why it is skipped (issue 23).

A reader copies these commands; a renamed key, a moved module or a removed option breaks them without breaking
any other test. So each command of a fenced ```bash / ```sh / ```console block (or an unlabelled block that
starts like a shell command) is one test case named after its file and line, and it is classified by what it
runs:

- `python train.py ...` (and `make train ARGS=...`, which is train.py in .venv) runs as written plus the
  overrides that make it tiny (TINY: one epoch, no W&B, no pictures; a few batches of the scenes world). A
  multirun is capped to the first value of each swept key.
- `python sweep.py ...` runs its spec capped to one job of one epoch (the extra overrides sweep.py passes to every
  job come after the swept values, and Hydra keeps the last value of a key); `--collect` tabulates the sweep an
  earlier command of its block ran; `--wandb-sweep` only writes a YAML.
- `python -m nanovlm.evaluate ckpt=<placeholder>/checkpoints/last.ckpt` runs against the checkpoint of the
  `default_cli_run` fixture (tests/conftest.py); a concrete ckpt path is the one an earlier command of its block
  trained.
- `python -m nanovlm.bench`: `--plain` runs (one epoch); `--quick` (BENCH_QUICK) and the full figures
  (BENCH_LONG) skip: they time repeated runs, minutes even quick.
- set-up, CI and W&B commands skip with the reason SKIP gives; a command that repeats an earlier one, or repeats
  its keys with other values, skips too (DUPLICATE), after its overrides are composed in-process, which is cheap
  and still catches a key or an option that does not exist.
- a command no rule matches FAILS, so a new doc command cannot slip through unclassified.

Each block runs in order in its own temporary dir (a block is a script: `runs/default` of one line is the ckpt
of the next, a shell variable set on one line is read on later ones), through `bash -eo pipefail` with `python`
the test's interpreter and `train.py` / `sweep.py` the repo's. The blocks run two at a time in the session
fixture `doc_runs`, only those that hold a selected case; the cases read its results. Running cases are
`slow`; the skipping and failing ones are not, so `make test-fast` still catches an unclassified command.
New pages in docs/ are picked up by the glob.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO, user_env, warm_python

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_LABELS = {"bash", "sh", "shell", "console", "zsh"}
# An unlabelled block is a shell block when its first line starts like one of the commands the docs use; the
# others (a file tree, a run's printout) are not commands.
SHELL_START = re.compile(r"^(\$ )?(python3?|make|pip3?|git|wandb|sbatch|srun|bash|pytest|taskset|for|\.ci/)\b")
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
ASSIGNMENT = re.compile(r"^([A-Za-z_]\w*)=(.*)$")
PYTHON = r"python3?"
JOBS = int(os.environ.get("NANOVLM_DOC_JOBS", "2"))  # blocks run at a time (the suite's CI has 2 cores)
TIMEOUT_S = 300  # one command; the tiny ones take seconds

# Commands that change the environment, need what a test machine lacks, or run this suite: prefix -> why.
SKIP = {
    "make ": "a Makefile target: builds .venv(-min) and runs the suite or the linters, which CI runs itself (.ci/run)",
    "python -m venv": "creates a virtual environment: set-up, which `make install` and CI do",
    "pip ": "installs packages into the environment: set-up, which `make install` and CI do",
    "python -m pip": "installs packages into the environment: set-up, which `make install` and CI do",
    "git ": "changes the checkout",
    "apt-get ": "installs a system package: set-up",
    "wandb ": "W&B's CLI on a user's run dir or account; tests/conftest.py reads offline runs with `wandb leet`",
    "sbatch": "submits to a SLURM cluster",
    "srun": "runs on a SLURM cluster",
    "pytest": "runs the test suite, this file among it",
    "python -m pytest": "runs the test suite, this file among it",
    "taskset ": "runs the test suite on pinned cores, this file among it",
    "bash .ci/run": "CI on a clean clone: the whole suite at two version ranges, this file among it",
    ".ci/run": "CI on a clean clone: the whole suite at two version ranges, this file among it",
}
# train.py options that need a machine the tests do not have.
NEEDS_CLUSTER = {
    "hydra/launcher=slurm": "submits the jobs to SLURM (hydra/launcher=slurm): needs a cluster",
    "trainer=gpu": "needs a CUDA GPU",
    "trainer=mps": "needs an Apple GPU",
}
BENCH_QUICK = (
    "times its figures with repeats: two minutes of CPU even --quick, over this file's budget; "
    "tests/test_bench.py::test_quick_bench_writes_a_sane_table runs the same run_bench(quick=True)"
)
BENCH_LONG = "times full training runs, several minutes (docs/performance.md)"
DISK_DATA = (
    "reads a dataset of one's own from disk (the paths are examples): tests/test_disk_data.py, test_disk_train.py "
    "and test_export.py build tiny ones in each format and train on them; its overrides compose"
)
DISK_FORMATS = ("data=csv", "data=coco", "data=wds")

# What makes a train.py run tiny: key -> value, added unless the command sets the key (or a key under it).
TINY = {"trainer.max_epochs": "1", "logger": "none", "plots": "none"}
# A value of the user's kept unless it takes long: key -> the most that is still quick.
QUICK_MAX = {"trainer.max_epochs": 2}
# The scenes world has 12,636 images and the question world 24,300 training questions: a whole epoch and its
# validation take minutes of CPU (over the timeout on a slow CI machine), so those commands run a few batches.
FEW_BATCHES = ["+trainer.limit_train_batches=2", "+trainer.limit_val_batches=2"]
BIG_WORLDS = {"data=scenes": "the scenes world", "data=vqa": "the question world"}
SCENES_SWEEP = (
    "a sweep of the scenes world: even cut to a few batches each job renders its 12,636 images, and a sweep is "
    "several jobs plus its report; the scenes train.py commands run that world, sweeps.md's the sweep machinery; "
    "its spec and overrides compose"
)
PLACEHOLDER = re.compile(r"<[^<>\s][^<>]*>")


@dataclass
class DocCommand:
    """One command of a page: where it is, its text (prompt and comment tail gone, continuations joined) and
    the shell variables its block set before it."""

    page: str
    line: int
    block: int  # the block's first line: commands of one block run in order, in one dir
    text: str
    variables: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


@dataclass
class Plan:
    """What the test does with a command: `run` the shell line `script` (`needs_ckpt`: a placeholder
    checkpoint), `skip` with `reason` (after composing `check`, a train.py/sweep.py argument list), or `fail`."""

    action: str  # run | skip | fail
    reason: str = ""
    script: str = ""
    notes: list[str] = field(default_factory=list)
    needs_ckpt: bool = False
    check: tuple[str, list[str]] | None = None
    key: tuple[str, list[str]] | None = None  # (script or module, its arguments): what DUPLICATE compares
    reads: bool = False  # reads what its block's earlier commands wrote (or the fixture's checkpoint)
    cost: int = 1  # processes it starts, roughly: the pool starts the dearest first


def strip_comment(line: str) -> str:
    """The line without a `# comment` tail (a # inside quotes, or inside a word, stays)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def blocks(page: Path) -> list[tuple[int, str, list[tuple[int, str]]]]:
    """The fenced blocks of a page: (first line, label, [(line number, line)])."""
    found, current = [], None
    for number, line in enumerate(page.read_text().splitlines(), 1):
        fence = FENCE.match(line)
        if fence and current is None:
            current = (number + 1, fence.group(2).lower(), [])
        elif fence and line.strip().startswith(fence.group(1)[:3]) and not fence.group(2):
            found.append(current)
            current = None
        elif current is not None:
            current[2].append((number, line))
    return found


def commands(page: Path) -> list[DocCommand]:
    """The shell commands of a page's shell blocks, in order."""
    rel = str(page.relative_to(REPO)) if page.is_relative_to(REPO) else page.name
    out = []
    for start, label, lines in blocks(page):
        first = next((text.strip() for _, text in lines if text.strip()), "")
        if label not in SHELL_LABELS and not (label == "" and SHELL_START.match(first)):
            continue
        variables: dict[str, str] = {}
        pending: tuple[int, str] | None = None
        loop_depth = 0
        for number, raw in lines:
            text = raw.strip()
            if label == "console" and pending is None and not text.startswith("$ "):
                continue  # program output
            text = strip_comment(text.removeprefix("$ "))
            if not text and pending is None:
                continue  # a blank line or a comment of its own
            joined = (pending[1] + ("\n" if loop_depth else " ") + text) if pending else text
            at = pending[0] if pending else number
            loop_depth += len(re.findall(r"^(?:for|while)\b", text)) - len(re.findall(r"^done\b", text))
            if joined.endswith("\\"):
                pending = (at, joined[:-1].rstrip())
            elif loop_depth > 0:
                pending = (at, joined)
            else:
                pending = None
                out.append(DocCommand(rel, at, start, joined, dict(variables)))
                if assignment(joined):
                    variables.update([assignment(joined)])
    return out


def assignment(text: str) -> tuple[str, str] | None:
    """(name, value) of a line that only sets a shell variable, `C="a b"`; None for any other line."""
    try:
        words = shlex.split(text)
    except ValueError:
        return None
    match = ASSIGNMENT.match(words[0]) if len(words) == 1 else None
    return (match.group(1), match.group(2)) if match else None


def expand(command: DocCommand) -> list[str]:
    """The command's words as bash would split them after setting the block's variables (for classifying;
    the run itself is bash's)."""
    text = command.text
    for name, value in command.variables.items():
        text = text.replace(f'"${name}"', shlex.quote(value)).replace(f"${name}", value)
    return shlex.split(text)


def option_keys(words: list[str]) -> frozenset[str]:
    """The keys a command sets (`key` of key=value, and its --flags) but TINY's, which the test sets anyway:
    two commands with the same keys differ only in their values."""
    keys = {w.split("=", 1)[0].lstrip("+~") if "=" in w else w for w in words if "=" in w or w[:1] == "-"}
    return frozenset(keys - set(TINY))


def sets(words: list[str], key: str) -> bool:
    """Whether a key=value word sets `key` or a key under it (`logger.log_model` sets logger)."""
    names = [w.split("=", 1)[0].lstrip("+~") for w in words if "=" in w]
    return any(n == key or n.startswith(key + ".") or n.startswith(key + "/") for n in names)


def split_top(value: str) -> list[str]:
    """A Hydra sweep value split at its top-level commas (not inside [], {}, () or quotes)."""
    parts, depth, quote, start = [], 0, None, 0
    for i, char in enumerate(value):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(value[start:i])
            start = i + 1
    return [*parts, value[start:]]


def python_words(text: str) -> str:
    """The shell line with `python` the test's interpreter and a repo script (train.py, .ci/x.py) by its path."""
    exe = shlex.quote(sys.executable)
    text = re.sub(
        rf"(?<![\w/.-]){PYTHON}\s+(?!-)([\w./-]+\.py)\b", lambda m: f"{exe} {shlex.quote(str(REPO / m[1]))}", text
    )
    return re.sub(rf"(?<![\w/.-]){PYTHON}(?=\s)", exe, text)


def insert_after(text: str, anchor: str, words: list[str]) -> str:
    """The line with `words` right after the first `anchor` (before anything the command pipes to)."""
    return text.replace(anchor, " ".join([anchor, *map(shlex.quote, words)]), 1) if words else text


def cut_long_values(text: str, words: list[str]) -> tuple[str, list[str]]:
    """The line with a QUICK_MAX key the command sets too high cut to TINY's value; (line, notes)."""
    notes = []
    for word in words:
        key, _, value = word.partition("=")
        if key in QUICK_MAX and value.isdigit() and int(value) > QUICK_MAX[key]:
            text = re.sub(rf"(?<!\S){re.escape(word)}(?!\S)", f"{key}={TINY[key]}", text)
            notes.append(f"{word} cut to {key}={TINY[key]}: the doc's value trains for minutes")
    return text, notes


def tiny_train(text: str, words: list[str]) -> tuple[str, list[str]]:
    """train.py's line made tiny: TINY where the command does not set a key, long values cut, the scenes world
    cut to a few batches, a multirun to its first job. All go at the end (Hydra takes its flags, -m, before the
    overrides, and the last value of a key wins). Returns (line, notes)."""
    text, notes = cut_long_values(text, words)
    extra = [k + "=" + v for k, v in TINY.items() if not sets(words, k)]
    for world, name in BIG_WORLDS.items():
        if world in words:
            extra += FEW_BATCHES
            notes.append(f"{name} cut to a few batches (" + " ".join(FEW_BATCHES) + ")")
    if {"-m", "--multirun"} & set(words):
        caps = []
        for word in words:
            key, _, value = word.partition("=")
            if value and "/" not in key and len(split_top(value)) > 1:
                caps.append(f"{key}={split_top(value)[0]}")
        if caps:
            notes.append("multirun capped to its first job: " + " ".join(caps))
        extra += caps
    return text + "".join(" " + shlex.quote(w) for w in extra), notes


def _first_values(words: list[str]) -> list[str]:
    """The key=value words of a command as one job sees them (a sweep's first value; no hydra.* keys)."""
    out = []
    for word in words:
        key, _, value = word.partition("=")
        if value and not key.lstrip("+~").startswith("hydra"):
            out.append(f"{key}={split_top(value)[0]}")
    return out


def classify(command: DocCommand, earlier: dict) -> Plan:
    """The plan for one command; `earlier` maps (script, keys) and (script, words) of the commands already
    planned to run to their id (the DUPLICATE rule)."""
    text = command.text
    make_train = re.match(r"^make train(?:\s+ARGS=(.*))?$", text)
    if make_train:  # `make train` is `.venv/bin/python train.py $(ARGS)` once .venv exists
        text = "python train.py " + " ".join(shlex.split(make_train.group(1) or ""))
    if assignment(text):
        return Plan("skip", "sets a shell variable; the block's later commands run with it set")
    for prefix, reason in SKIP.items():
        if text.startswith(prefix) or text == prefix.strip():
            return Plan("skip", reason)
    words = expand(DocCommand(command.page, command.line, command.block, text, command.variables))
    head = words[:2]

    if text.startswith(("for ", "while ")):
        if re.search(rf"{PYTHON}\s+-m\s+nanovlm\.evaluate\b", text) and not re.search(r"train\.py|sweep\.py", text):
            return Plan(
                "run", script=python_words(text), notes=["a loop over the checkpoints its block trained"], reads=True
            )
        return Plan("fail", f"no rule for a shell loop: {text!r}")

    if len(head) == 2 and re.fullmatch(PYTHON, head[0]) and head[1] in ("train.py", "sweep.py"):
        script, args = head[1], words[2:]
        for option, reason in NEEDS_CLUSTER.items():
            if option in args:
                return Plan("skip", reason)
        if script == "train.py" and set(DISK_FORMATS) & set(args):
            return Plan("skip", DISK_DATA, check=("train.py", args))
        plan = _plan_train(text, args, earlier) if script == "train.py" else _plan_sweep(text, args, earlier)
        plan.key = (script, args)
        return plan

    if len(head) == 2 and re.fullmatch(PYTHON, head[0]) and head[1] == "-m" and len(words) > 2:
        module, args = words[2], words[3:]
        if module == "nanovlm.evaluate" and any(a.startswith("zeroshot.root=") for a in args):
            return Plan("skip", "classifies an ImageFolder of one's own: tests/test_disk_train.py builds one")
        if module == "nanovlm.export":  # the seed world: a few hundred PNGs instead of a bigger world's thousands
            line = re.sub(r"\bdata=\w+", "data=shapes", python_words(text))
            return Plan("run", script=line, notes=["data=shapes: the seed world, 243 images"])
        if module == "nanovlm.evaluate":
            duplicate = _duplicate(module, args, earlier)
            if duplicate:
                return Plan("skip", duplicate)
            plan = _plan_evaluate(text, args)
            plan.key = (module, args)
            return plan
        if module == "nanovlm.bench":
            if "--quick" in args:
                return Plan("skip", BENCH_QUICK)
            if "--plain" in args:  # the plain loop takes Hydra overrides after its flags
                extra = [] if sets(args, "trainer.max_epochs") else ["trainer.max_epochs=1"]
                return Plan("run", script=python_words(text + "".join(" " + e for e in extra)), notes=extra)
            return Plan("skip", BENCH_LONG)
    if len(head) == 2 and re.fullmatch(PYTHON, head[0]) and head[1] == "-c":
        return Plan("run", script=python_words(text))
    if len(head) == 2 and re.fullmatch(PYTHON, head[0]) and head[1] == ".ci/min_versions.py":
        return Plan("run", script=python_words(text), notes=["prints pip constraints; installs nothing"])
    return Plan("fail", f"no rule for this command (add one to tests/test_doc_commands.py): {text!r}")


def _duplicate(script: str, args: list[str], earlier: dict) -> str | None:
    """Why a command repeats an earlier running one, or None."""
    same_words, same_keys = (script, tuple(args)), (script, option_keys(args))
    if same_words in earlier:
        return f"the same command as {earlier[same_words]}, which runs"
    if same_keys in earlier:
        return f"the same keys as {earlier[same_keys]} (which runs) with other values"
    return None


def _remember(earlier: dict, script: str, args: list[str], at: str) -> None:
    earlier.setdefault((script, tuple(args)), at)
    earlier.setdefault((script, option_keys(args)), at)


def _plan_train(text: str, args: list[str], earlier: dict) -> Plan:
    duplicate = _duplicate("train.py", args, earlier)
    if duplicate:
        return Plan("skip", duplicate + "; its overrides compose", check=("train.py", args))
    script, notes = tiny_train(python_words(text), args)
    return Plan("run", script=script, notes=notes, cost=2 if {"-m", "--multirun"} & set(args) else 1)


def _plan_sweep(text: str, args: list[str], earlier: dict) -> Plan:
    from nanovlm.run.config import ConfigError
    from nanovlm.sweeps.spec import load_spec

    if "--collect" in args:
        target = args[args.index("--collect") + 1]
        if PLACEHOLDER.search(target):  # the sweep dir an earlier command of the block made, by its name
            pattern = PLACEHOLDER.sub("*", target)
            line = python_words(text).replace(target, f"$(ls -d {pattern} | tail -n 1)")
            return Plan("run", script=line, notes=[f"{target}: the sweep {pattern} an earlier command ran"], reads=True)
        return Plan("run", script=python_words(text), reads=True)
    named = dict(a.split("=", 1) for a in args if a.split("=", 1)[0] in ("sweep", "launcher"))
    name = named.get("sweep", "")
    if PLACEHOLDER.search(name) or "path/to/" in name:
        return Plan("skip", f"sweep={name} is a placeholder for a spec of one's own")
    try:
        spec = load_spec(name)
    except ConfigError as error:
        return Plan("fail", f"sweep={name}: {error}")
    if "--wandb-sweep" in args:
        return Plan("run", script=python_words(text), notes=["writes a W&B sweep YAML; trains nothing"])
    if spec.sweeper != "basic":
        return Plan(
            "skip",
            f"sweeper={spec.sweeper} runs its n_trials={spec.n_trials} trials: sweep.py sets hydra.sweeper.n_trials "
            "after the extra overrides, so it cannot be cut to one",
        )
    if "data=scenes" in spec.overrides:
        return Plan("skip", SCENES_SWEEP, check=("sweep.py", args))
    duplicate = _duplicate("sweep.py", args, earlier)
    if duplicate:
        return Plan("skip", duplicate + "; its spec and overrides compose", check=("sweep.py", args))
    # sweep.py's argparse takes its positional overrides in one run: the extra ones go right after sweep.py.
    line, notes = cut_long_values(python_words(text), args)
    extra = [f"{k}={v}" for k, v in TINY.items() if not sets(args, k)]
    # report.py draws the heatmap from its two keys and needs both swept: two values each, one for the rest.
    caps = [f"{k}={','.join(split_top(v)[: 2 if k in spec.heatmap else 1])}" for k, v in spec.params.items()]
    notes.append("capped to its first job" + (" per heatmap cell: " if spec.heatmap else ": ") + " ".join(caps))
    line = insert_after(line, shlex.quote(str(REPO / "sweep.py")), [*extra, *caps])
    return Plan("run", script=line, notes=notes, cost=4)


def _plan_evaluate(text: str, args: list[str]) -> Plan:
    line, notes, needs = python_words(text), [], False
    ckpt = re.search(r"ckpt=((?:<[^<>]*>|[^\s<])+)", line)  # a placeholder may hold a space: <run dir>
    head = ckpt.group(1).split("/checkpoints/")[0] if ckpt else ""
    if PLACEHOLDER.search(head):
        line = line.replace(f"ckpt={head}", "ckpt=$NANOVLM_DOC_RUN", 1)
        notes.append(f"{head}: the run dir of the default_cli_run fixture (tests/conftest.py)")
        needs = True
    if not sets(args, "plots"):
        line = insert_after(line, "nanovlm.evaluate", ["plots=false"])
        notes.append("plots=false: no pictures")
    return Plan("run", script=line, notes=notes, needs_ckpt=needs, reads=True)


def plan_all() -> list[tuple[DocCommand, Plan]]:
    """Every command of every page with its plan, in page order (README.md first, then docs/ by name)."""
    earlier: dict = {}
    planned = []
    for page in PAGES:
        for command in commands(page):
            plan = classify(command, earlier)
            if plan.action == "run" and plan.key:
                _remember(earlier, *plan.key, command.id)
            planned.append((command, plan))
    return planned


PLANNED = plan_all()


@dataclass
class Outcome:
    """How a command ran: the line bash ran, its exit code and everything it printed."""

    line: str
    returncode: int
    output: str
    seconds: float


def run_one(command: DocCommand, plan: Plan, cwd: Path, run_dir: Path | None) -> Outcome:
    """One command in its block's dir `cwd`, with the block's shell variables set before it."""
    python, warm_env = warm_python()  # each `python ...` of the line a fork of the warm server (tests/warm.py)
    env = {**user_env(), "WANDB_MODE": "offline", "WANDB_SILENT": "true", "NANOVLM_DOC_RUN": str(run_dir or "")}
    env.update(warm_env)
    assignments = "".join(f"{name}={shlex.quote(value)}\n" for name, value in command.variables.items())
    exe = shlex.quote(sys.executable)
    line = re.sub(rf"(?<!\S){re.escape(exe)}(?=\s)", " ".join(map(shlex.quote, python)), plan.script)
    start = time.perf_counter()
    try:
        done = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", assignments + line],
            cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
        )  # fmt: skip
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as timeout:
        code, output = -1, f"timed out after {TIMEOUT_S} s\n{timeout.stdout or ''}{timeout.stderr or ''}"
    return Outcome(plan.script, code, output, time.perf_counter() - start)


@pytest.fixture(scope="session")
def doc_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Run every command of the blocks that hold a selected running case, JOBS at a time, each block in its own
    dir: first what trains or writes (the longest first), then what reads it (an evaluation, `--collect`, a
    loop), so that the independent runs of one block (docs/studies.md's seven) share the pool too. A placeholder
    checkpoint is default_cli_run's, which test_console.py and test_train.py share; it trains meanwhile."""
    selected = {item.callspec.id for item in request.session.items if item.originalname == "test_doc_command"}
    blocks_of: dict[tuple[str, int], list[tuple[DocCommand, Plan]]] = {}
    for command, plan in PLANNED:
        blocks_of.setdefault((command.page, command.block), []).append((command, plan))
    wanted = [b for b in blocks_of.values() if any(p.action == "run" and c.id in selected for c, p in b)]
    tasks = []
    for block in wanted:
        cwd = tmp_path_factory.mktemp("doc_block")
        tasks += [(command, plan, cwd) for command, plan in block if plan.action == "run"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=JOBS) as pool:
        producers = sorted((t for t in tasks if not t[1].reads), key=lambda t: -t[1].cost)
        futures = {t[0].id: pool.submit(run_one, *t, None) for t in producers}
        run_dir = None
        if any(plan.needs_ckpt for _, plan, _ in tasks):
            run_dir, result = request.getfixturevalue("default_cli_run")
            assert result.returncode == 0, result.stdout + result.stderr
        concurrent.futures.wait(futures.values())
        futures.update({t[0].id: pool.submit(run_one, *t, run_dir) for t in tasks if t[1].reads})
        outcomes = {key: future.result() for key, future in futures.items()}
    summary = "\n".join(f"{o.seconds:6.1f} s  rc {o.returncode:3}  {key}" for key, o in outcomes.items())
    (tmp_path_factory.getbasetemp() / "doc_runs.txt").write_text(summary + "\n")  # where the time goes
    return outcomes


def check_overrides(script: str, args: list[str]) -> None:
    """Compose what a skipped duplicate would run, as one job sees it: its options and keys must exist."""
    from hydra import compose, initialize_config_dir

    from nanovlm.run.config import CONFIG_DIR, check_fixed_keys
    from nanovlm.sweeps.spec import load_spec

    overrides = _first_values([a for a in args if not a.startswith("-")])
    if script == "sweep.py":
        named = dict(o.split("=", 1) for o in overrides if o.split("=", 1)[0] in ("sweep", "launcher"))
        spec = load_spec(named["sweep"])
        extra = [o for o in overrides if o.split("=", 1)[0] not in ("sweep", "launcher")]
        overrides = [*spec.overrides, *(f"{k}={split_top(v)[0]}" for k, v in spec.params.items()), *extra]
    with tempfile.TemporaryDirectory() as run_dir, initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        check_fixed_keys(compose("config", overrides=[f"run_dir={run_dir}", *overrides]))


def _param(command: DocCommand, plan: Plan):
    marks = [pytest.mark.slow] if plan.action == "run" else []
    return pytest.param(command, plan, id=command.id, marks=marks)


@pytest.mark.parametrize(("command", "plan"), [_param(c, p) for c, p in PLANNED])
def test_doc_command(command: DocCommand, plan: Plan, request: pytest.FixtureRequest) -> None:
    """The command runs as written plus the overrides that make it tiny, or skips saying why."""
    if plan.action == "fail":
        pytest.fail(plan.reason)
    if plan.action == "skip":
        if plan.check:
            check_overrides(*plan.check)
        pytest.skip(f"{command.id}: {plan.reason}")
    outcome = request.getfixturevalue("doc_runs")[command.id]
    notes = "".join(f"\n  note: {n}" for n in plan.notes)
    print(f"{command.id}: {command.text}\n$ {outcome.line}{notes}\n({outcome.seconds:.1f} s)")
    assert outcome.returncode == 0, f"exit code {outcome.returncode}\n$ {outcome.line}{notes}\n{outcome.output}"


def test_every_page_has_its_commands_collected() -> None:
    """The scan finds commands on the pages known to hold them (a broken fence parser would find none)."""
    pages = {c.page for c, _ in PLANNED}
    assert {"README.md", "docs/sweeps.md", "docs/evaluation.md"} <= pages, pages


def test_the_scan_reads_shell_blocks_as_a_user_would(tmp_path: Path) -> None:
    """A `$ ` prompt and a comment tail go, a continuation joins, output and non-shell blocks are left out."""
    page = tmp_path / "page.md"
    page.write_text(
        textwrap.dedent("""
        ```console
        $ python train.py loss=clip   # a comment
        output line
        ```
        ```
        python sweep.py sweep=zoo \\
            launcher=joblib
        ```
        ```
        a file tree, not commands
        ```
        ```python
        print("not shell")
        ```
        """)
    )
    found = [(c.line, c.text) for c in commands(page)]
    assert found == [(3, "python train.py loss=clip"), (7, "python sweep.py sweep=zoo launcher=joblib")]


def test_a_command_no_rule_matches_fails() -> None:
    assert classify(DocCommand("page.md", 1, 1, "rm -rf outputs"), {}).action == "fail"
    assert classify(DocCommand("page.md", 1, 1, "python -m nanovlm.other"), {}).action == "fail"
