"""The README and docs/ against the repository: a command they show must run as shown, and a link must lead
somewhere.

- every `python X.py ...` (also `$(PY) X.py`, `.venv/bin/python X.py`, `torchrun ... X.py`, subcommands such as
  `X.py download ...`) names a script that exists, and each of its `--flags` appears in that script's `--help`;
- every `make TARGET VAR=...` names a rule of the Makefile and a variable the Makefile reads;
- every relative link or image points at a file that exists (and at a heading that exists, for `#anchors`).

Commands are read from fenced code blocks (backslash continuations joined, `# comments` dropped) and from inline
code spans. Each check lists every offending reference, with its file and line, so one run shows them all.
The `--help` texts come from one Python process that runs each script's argument parser in turn (importing torch
once), so the whole file takes seconds.
"""
import json
import re
import shlex
import subprocess
import sys
from functools import lru_cache

import pytest

from conftest import REPO_ROOT

MAX_README_LINES = 200  # a front door: pictures, two commands, your own photos, results; the rest is in docs/
FIRST_SCREEN = 60  # lines a reader sees before scrolling far


def doc_files(root=REPO_ROOT):
    """The Markdown a reader follows: top-level pages, docs/ and images/."""
    return sorted([*root.glob("*.md"), *root.glob("docs/**/*.md"), *root.glob("images/*.md")])


# ---------------------------------------------------------------------------------------------------
# Reading the Markdown
# ---------------------------------------------------------------------------------------------------
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`((?:[^`\n]|\n(?![ \t]*\n))+)`")  # one span, which may wrap onto the next line
SHELL_COMMENT = re.compile(r"(^|\s)#.*$")
SHELL_SEPARATOR = re.compile(r"&&|\|\||[;|]")


def split_fences(text):
    """(prose with fenced blocks blanked out, [(line number, code line)]): blanking keeps line numbers."""
    prose, code, inside = [], [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
            prose.append("")
        elif inside:
            code.append((number, line))
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), code


def command_lines(text):
    """[(line number, command)]: the logical lines of fenced blocks (continuations joined, comments dropped)
    and every inline code span."""
    prose, code = split_fences(text)
    commands, pending, start = [], "", None
    for number, line in code:
        line = SHELL_COMMENT.sub("", line).rstrip()
        if start is None:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        commands.append((start, pending + line))
        pending, start = "", None
    if pending:
        commands.append((start, pending))
    for match in INLINE_CODE.finditer(prose):
        commands.append((prose.count("\n", 0, match.start()) + 1, match.group(1).replace("\n", " ")))
    return commands


def shell_words(piece):
    try:
        return shlex.split(piece)
    except ValueError:  # an unbalanced quote in an inline span: plain words are good enough
        return piece.split()


def simple_commands(command):
    """The words of each simple command in a shell line (split at ;, &&, ||, |), redirections dropped."""
    for piece in SHELL_SEPARATOR.split(command):
        words = [w for w in shell_words(piece) if not re.match(r"^\d?>", w)]
        if words:
            yield words


def is_python(word):
    return word in ("$(PY)", "$PY", "${PY}") or re.fullmatch(r"python[0-9.]*", word.rsplit("/", 1)[-1]) is not None


def python_calls(text):
    """[(line, script, arguments)] for every script a command runs with Python or torchrun."""
    calls = []
    for line, command in command_lines(text):
        for words in simple_commands(command):
            for i, word in enumerate(words):
                if is_python(word) and i + 1 < len(words) and words[i + 1].endswith(".py"):
                    calls.append((line, words[i + 1], words[i + 2:]))
                    break
                if word.rsplit("/", 1)[-1] == "torchrun":
                    scripts = [j for j in range(i + 1, len(words)) if words[j].endswith(".py")]
                    if scripts:
                        calls.append((line, words[scripts[0]], words[scripts[0] + 1:]))
                    break
    return calls


def make_calls(text):
    """[(line, targets, variables)] for every `make ...` command."""
    calls = []
    for line, command in command_lines(text):
        for words in simple_commands(command):
            while words and re.fullmatch(r"\w+=.*", words[0]):  # VAR=value make ...
                words = words[1:]
            if words and words[0] == "make":
                args = [w for w in words[1:] if not w.startswith("-")]
                calls.append((line, [a for a in args if "=" not in a], [a.split("=")[0] for a in args if "=" in a]))
    return calls


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")


def relative_links(text):
    """[(line, target)] for every link or image outside code that is not a URL."""
    prose, _ = split_fences(text)
    prose = INLINE_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), prose)  # same offsets, no code
    found = []
    for pattern in (LINK, HTML_LINK):
        for match in pattern.finditer(prose):
            target = match.group(1)
            if not EXTERNAL.match(target):
                found.append((prose.count("\n", 0, match.start()) + 1, target))
    return sorted(found)


def heading_anchors(text):
    """The #anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces to hyphens,
    repeats numbered."""
    prose, _ = split_fences(text)
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose, flags=re.M):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


# ---------------------------------------------------------------------------------------------------
# What the repository has
# ---------------------------------------------------------------------------------------------------
HELP_DRIVER = r"""
import contextlib, io, json, runpy, sys
results = {}
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit:
        pass
    except BaseException as e:
        out.write(f"\n--help raised {type(e).__name__}: {e}")
    results[" ".join(argv[:-1])] = out.getvalue()
sys.__stdout__.write("\n@@HELP@@" + json.dumps(results))
"""


def run_help(argvs, root=REPO_ROOT):
    """{"script [subcommand]": its --help text}, from one Python process (torch is imported once, not per script)."""
    if not argvs:
        return {}
    done = subprocess.run([sys.executable, "-c", HELP_DRIVER, json.dumps(argvs)], cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert "@@HELP@@" in done.stdout, f"the --help driver failed:\n{done.stderr[-2000:]}"
    return json.loads(done.stdout.rsplit("@@HELP@@", 1)[1])


def subcommands(help_text):
    """The choices of a positional {a,b,c} group (argparse subcommands); a flag's choices are left out."""
    found = set()
    for match in re.finditer(r"(\S*)\s*\{([\w,-]+)\}", help_text):
        before = match.group(1).lstrip("[")
        if not (before.startswith("-") and not before.endswith("]")):
            found.update(match.group(2).split(","))
    return found


def has_flag(help_text, flag):
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None


def flag_choices(help_text, flag):
    """The values a flag accepts when its --help lists them (`--preset {a,b}`), else None."""
    match = re.search(rf"(?<![\w-]){re.escape(flag)}[ =]\{{([^{{}}]+)\}}", help_text)
    return set(match.group(1).split(",")) if match else None


def flag_values(args):
    """(flag, the word after it or after its =, or None) for each --flag in a command's arguments."""
    for i, arg in enumerate(args):
        if arg.startswith("--") and len(arg) > 2:
            flag, eq, value = arg.partition("=")
            following = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("-") else None
            yield flag, value if eq else following


PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")  # `--preset PRESET` in prose stands for any value


def flag_problems(calls, help_of, root=REPO_ROOT):
    """One line per script that does not exist, subcommand it lacks, or flag its --help does not show.
    calls: [(where, script, arguments)]; help_of(script, subcommand or None) -> --help text."""
    problems = []
    for where, script, args in calls:
        if not (root / script).is_file():
            problems.append(f"{where}: {script}: no such script")
            continue
        main_help = help_of(script, None)
        sub = args[0] if args and not args[0].startswith("-") and args[0] in subcommands(main_help) else None
        text = help_of(script, sub) if sub else main_help
        name = f"{script} {sub}" if sub else script
        if not text.strip():
            problems.append(f"{where}: {name} --help prints nothing")
        for flag, value in dict.fromkeys(flag_values(args)):
            choices = flag_choices(text, flag)
            if not has_flag(text, flag):
                problems.append(f"{where}: {name} {flag}: not in `{name} --help`")
            elif choices and value is not None and value not in choices and not PLACEHOLDER.fullmatch(value):
                problems.append(f"{where}: {name} {flag} {value}: not one of {{{','.join(sorted(choices))}}}")
    return problems


def makefile_rules(makefile):
    """(targets, variables) of a Makefile: rule names (special .TARGETS left out) and every variable it sets
    or reads."""
    text = makefile.read_text()
    targets = set()
    for names in re.findall(r"^([^\s#.=:$][^:=#]*?)\s*::?(?!=)", text, flags=re.M):
        targets.update(names.split())
    variables = set(re.findall(r"^(\w+)\s*[?:+]?=", text, flags=re.M)) | set(re.findall(r"\$\((\w+)\)", text))
    return targets, variables


def make_problems(calls, targets, variables):
    problems = []
    for where, names, assigned in calls:
        problems += [f"{where}: make {t}: the Makefile has no such target" for t in names if t not in targets]
        problems += [f"{where}: make {v}=...: the Makefile never reads {v}" for v in assigned if v not in variables]
    return problems


def link_problems(path, root=REPO_ROOT):
    problems = []
    for line, target in relative_links(path.read_text()):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{line}"
        if not dest.exists():
            problems.append(f"{where}: {target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest.read_text()):
            problems.append(f"{where}: {target}: no heading #{anchor} in {dest.name}")
    return problems


# ---------------------------------------------------------------------------------------------------
# The checks on this repository's docs
# ---------------------------------------------------------------------------------------------------
def docs_python_calls():
    return [(f"{p.relative_to(REPO_ROOT)}:{line}", script, args)
            for p in doc_files() for line, script, args in sorted(python_calls(p.read_text()), key=lambda c: c[0])]


@pytest.fixture(scope="module")
def help_texts():
    """Every --help the docs need, main and per subcommand, fetched in two batches."""
    calls = [c for c in docs_python_calls() if (REPO_ROOT / c[1]).is_file()]
    texts = {}
    scripts = sorted({script for _, script, _ in calls})
    main = run_help([[s, "--help"] for s in scripts])
    texts.update({(s, None): main[s] for s in scripts})
    subs = sorted({(s, a[0]) for _, s, a in calls if a and not a[0].startswith("-") and a[0] in subcommands(main[s])})
    sub_help = run_help([[s, sub, "--help"] for s, sub in subs])
    texts.update({(s, sub): sub_help[f"{s} {sub}"] for s, sub in subs})
    return texts


def test_the_docs_exist_and_say_commands():
    names = {p.relative_to(REPO_ROOT).as_posix() for p in doc_files()}
    assert {"README.md", "docs/training.md", "docs/data.md", "docs/attention.md", "docs/self_critical.md",
            "docs/results.md"} <= names
    assert len(docs_python_calls()) > 20  # the parser really finds the commands


def test_every_python_command_in_the_docs_exists(help_texts):
    problems = flag_problems(docs_python_calls(), lambda script, sub: help_texts[(script, sub)])
    assert not problems, "commands in the docs that the scripts do not accept:\n" + "\n".join(problems)


def test_every_make_command_in_the_docs_exists():
    targets, variables = makefile_rules(REPO_ROOT / "Makefile")
    assert {"demo", "test", "weights"} <= targets and "DATA_ROOT" in variables
    calls = [(f"{p.relative_to(REPO_ROOT)}:{line}", names, assigned)
             for p in doc_files() for line, names, assigned in sorted(make_calls(p.read_text()), key=lambda c: c[0])]
    assert calls
    problems = make_problems(calls, targets, variables)
    assert not problems, "make commands in the docs that the Makefile lacks:\n" + "\n".join(problems)


def test_every_relative_link_and_image_in_the_docs_exists():
    problems = [problem for p in doc_files() for problem in link_problems(p)]
    assert not problems, "links in the docs that lead nowhere:\n" + "\n".join(problems)


def test_the_docs_describe_the_code_not_its_history():
    """How the repository was built belongs to the git log: no "issue N" in what a user reads."""
    found = [f"{p.relative_to(REPO_ROOT)}:{n}: {line.strip()[:80]}" for p in doc_files()
             for n, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"\bissues? #?\d+", line, re.I)]
    assert not found, "history in the docs:\n" + "\n".join(found)


def test_readme_is_a_front_door():
    """Pictures, the two commands and the way to caption your own photos on the first screen; short."""
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move details into docs/"
    first = "\n".join(lines[:FIRST_SCREEN])
    assert first.count("![") + first.count("<img ") >= 3, "the first screen should show real captioned pictures"
    assert "make demo" in first and "make test" in first
    assert re.search(r"\]\(#caption-your-own-photos\)", first), "link to 'Caption your own photos' near the top"
    assert "caption-your-own-photos" in heading_anchors("\n".join(lines))


# ---------------------------------------------------------------------------------------------------
# The checker itself: it must find what it is meant to find
# ---------------------------------------------------------------------------------------------------
SAMPLE = """# Title

```bash
python train.py --preset shapes-cpu \\
    --epochs 3   # --not-a-flag in a comment
torchrun --nproc_per_node=2 train.py --bogus-flag=1 --epochs 2 --preset=c
$(PY) tools/gone.py --x
.venv/bin/python data_sources.py download flickr8k --dest data/f && make demo DATA_ROOT=d
python -m pytest tests/test_docs.py -q
```

Run `python train.py --preset PRESET`, `python caption.py --checkpoint runs/a/best.pt
--beam 3 images/` or `make nothing-here PHOTOS=p`; see [data](docs/data.md#layouts) and
![fig](images/missing.png), [web](https://example.com/x.md), [top](#title), [gone](#no-such-heading).
"""


def test_commands_are_read_from_blocks_and_inline_spans():
    calls = python_calls(SAMPLE)
    assert [(line, script) for line, script, _ in calls] == [
        (4, "train.py"), (6, "train.py"), (7, "tools/gone.py"), (8, "data_sources.py"), (12, "train.py"),
        (12, "caption.py")]
    assert calls[0][2] == ["--preset", "shapes-cpu", "--epochs", "3"]  # continuation joined, comment dropped
    assert calls[1][2] == ["--bogus-flag=1", "--epochs", "2", "--preset=c"]  # torchrun's own flags are not the script's
    assert calls[5][2] == ["--checkpoint", "runs/a/best.pt", "--beam", "3", "images/"]  # a span that wraps
    assert make_calls(SAMPLE) == [(8, ["demo"], ["DATA_ROOT"]), (13, ["nothing-here"], ["PHOTOS"])]
    assert relative_links(SAMPLE) == [(13, "docs/data.md#layouts"), (14, "#no-such-heading"), (14, "#title"),
                                      (14, "images/missing.png")]


def test_flag_check_names_every_unknown_flag_subcommand_and_script(tmp_path):
    for script in ("train.py", "data_sources.py", "caption.py"):
        (tmp_path / script).write_text("")
    helps = {("train.py", None): "usage: train.py [--preset {shapes-cpu,b}] [--epochs EPOCHS]",
             ("data_sources.py", None): "usage: data_sources.py [-h] {download,convert} ...",
             ("data_sources.py", "download"): "usage: data_sources.py download [--dest DEST] NAME",
             ("caption.py", None): ""}
    problems = flag_problems(python_calls(SAMPLE), lambda s, sub: helps[(s, sub)], root=tmp_path)
    assert problems == ["6: train.py --bogus-flag: not in `train.py --help`",
                        "6: train.py --preset c: not one of {b,shapes-cpu}",
                        "7: tools/gone.py: no such script",
                        "12: caption.py --help prints nothing",
                        "12: caption.py --checkpoint: not in `caption.py --help`",
                        "12: caption.py --beam: not in `caption.py --help`"]
    assert subcommands(helps[("train.py", None)]) == set()  # a flag's choices are not subcommands
    assert not has_flag("--epochs-max N", "--epochs")  # a longer flag is not the flag
    assert list(flag_values(["--a", "x", "--b=y", "--c", "--d"])) == [("--a", "x"), ("--b", "y"), ("--c", None),
                                                                    ("--d", None)]


def test_make_and_link_checks_name_what_is_missing(tmp_path):
    (tmp_path / "Makefile").write_text("X ?=\n.PHONY: demo\ndemo venv: data\n\t$(PY) run $(DATA_ROOT)\n"
                                       "Y := a:b\n")
    targets, variables = makefile_rules(tmp_path / "Makefile")
    assert targets == {"demo", "venv"} and {"X", "Y", "PY", "DATA_ROOT"} <= variables
    assert make_problems(make_calls(SAMPLE), targets, variables) == [
        "13: make nothing-here: the Makefile has no such target", "13: make PHOTOS=...: the Makefile never reads PHOTOS"]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "data.md").write_text("# Data\n## Layouts\n")
    (tmp_path / "README.md").write_text(SAMPLE)
    assert link_problems(tmp_path / "README.md", root=tmp_path) == [
        "README.md:14: #no-such-heading: no heading #no-such-heading in README.md",
        "README.md:14: images/missing.png: no such file"]


def test_heading_anchors_follow_githubs_rule():
    text = "# Show and Tell, runnable anywhere\n## `train.py`: resume\n## Results\n## Results\n```\n# not a heading\n```"
    assert heading_anchors(text) == {"show-and-tell-runnable-anywhere", "trainpy-resume", "results", "results-1"}
