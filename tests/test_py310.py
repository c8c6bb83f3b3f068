"""The README promises Python 3.10+: every module compiles under a Python 3.10 interpreter, and the download's
standard-library path (checking, hashing and unpacking zips, the marker files) runs under it. Skipped when no
Python 3.10 is found (on PATH as python3.10, or installed by pyenv)."""
import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO_ROOT


def python310_candidates():
    found = [shutil.which("python3.10")]
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found += sorted(glob.glob(os.path.join(pyenv_root, "versions", "3.10*", "bin", "python3.10")))
    return [p for p in found if p]


def find_python310():
    """A working Python 3.10 interpreter, or None (a pyenv shim whose version is not installed does not count)."""
    for path in python310_candidates():
        try:
            done = subprocess.run([path, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
                                  capture_output=True, text=True, timeout=30, env={**os.environ, "PYENV_VERSION": ""})
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.stdout.strip() == "True":
            return path
    return None


PYTHON310 = find_python310()
needs_310 = pytest.mark.skipif(PYTHON310 is None, reason="no Python 3.10 interpreter found")


def run310(code, *args, cwd=REPO_ROOT):
    return subprocess.run([PYTHON310, "-c", textwrap.dedent(code), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


@needs_310
def test_every_python_file_compiles_under_python_3_10():
    """Syntax that needs 3.11 or later (`except*`, nested quotes in f-strings, ...) fails here. compile() is used
    rather than py_compile, so that no __pycache__ is written into the repository."""
    files = sorted(str(p.relative_to(REPO_ROOT)) for pattern in ("*.py", "bench/*.py", "tests/*.py")
                   for p in REPO_ROOT.glob(pattern))
    assert "downloads.py" in files and "tests/test_py310.py" in files
    done = run310("""
        import sys
        for name in sys.argv[1:]:
            try:
                compile(open(name, "rb").read(), name, "exec")
            except SyntaxError as e:
                print(f"{name}:{e.lineno}: {e.msg}")
        """, *files)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "", "needs a newer Python than 3.10:\n" + done.stdout


# The 3.10 interpreter has only the standard library: these stand-ins satisfy the imports of PIL (not used by a
# download) and of tqdm (a progress bar that shows nothing).
STAND_INS = {
    "PIL/__init__.py": "Image = None\n\n\nclass UnidentifiedImageError(OSError):\n    pass\n",
    "tqdm/__init__.py": "",
    "tqdm/auto.py": textwrap.dedent("""
        class tqdm:
            def __init__(self, iterable=None, *args, **kwargs):
                self.iterable = iterable

            def __iter__(self):
                return iter(self.iterable)

            def update(self, n=1):
                pass

            def close(self):
                pass
        """),
}

# Two tiny Flickr8k zips put into dest by hand (so nothing is fetched), then the whole download: check, hash,
# unpack, count, marker; then a rerun, which must find the finished download.
DOWNLOAD_BY_HAND = """
    import hashlib, json, sys, zipfile
    from pathlib import Path
    sys.path[:0] = [sys.argv[1], "."]  # the stand-ins first, then the repository
    import downloads as dl

    dest = Path(sys.argv[2])
    dest.mkdir()
    with zipfile.ZipFile(dest / "Flickr8k_Dataset.zip", "w") as zf:
        for name in ("a.jpg", "b.jpg"):
            zf.writestr(f"Flicker8k_Dataset/{name}", b"not decoded by a download")
    with zipfile.ZipFile(dest / "Flickr8k_text.zip", "w") as zf:
        zf.writestr("Flickr8k.token.txt", "a.jpg#0\\ta dog runs .\\nb.jpg#0\\ta cat sits .\\n")
    sha = hashlib.sha256((dest / "Flickr8k_Dataset.zip").read_bytes()).hexdigest()
    counts = dl.download("flickr8k", dest, mirror="http://127.0.0.1:9", progress=False)
    marker = json.loads(dl.done_marker(dest, "flickr8k").read_text())
    again = dl.download("flickr8k", dest, mirror="http://127.0.0.1:9", progress=False)
    print(json.dumps({"counts": counts, "again": again, "sha_ok": marker["files"]["Flickr8k_Dataset.zip"]["sha256"] == sha,
                      "left": sorted(p.name for p in dest.iterdir())}))
    """


@needs_310
def test_a_download_runs_under_python_3_10(tmp_path):
    for name, text in STAND_INS.items():
        (tmp_path / "stand-ins" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "stand-ins" / name).write_text(text)
    done = run310(DOWNLOAD_BY_HAND, tmp_path / "stand-ins", tmp_path / "flickr8k")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["counts"] == {"images": 2, "caption lines": 2}
    assert result["again"] is None and result["sha_ok"]
    assert result["left"] == [".download-flickr8k.json", "Flicker8k_Dataset", "Flickr8k_text"]
