"""The layout (design.md): one module per stage, and imports that only point down.

The imports of every top-level module are read with `ast` (nothing is imported), so a circle or an entry point
that leans on another entry point fails here, whichever function the import hides in.
"""
import ast

import pytest

from conftest import REPO_ROOT

ENTRY_POINTS = {"train", "evaluate", "caption"}  # command lines: they import from below, never from each other
ON_TOP = ENTRY_POINTS | {"visualize", "hubconf"}  # nothing in the library may import these


def top_level_modules():
    return {p.stem: p for p in REPO_ROOT.glob("*.py")}


def imports_of(path, modules):
    """The repository modules that a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(modules) - {path.stem}


def import_graph():
    modules = top_level_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def find_cycle(graph):
    """One import circle as a list of module names, or None."""
    state = {}  # name -> "open" while on the current path, "done" after

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                return path[path.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep, path + [dep])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_cycle_finder_finds_a_circle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_inside_functions_are_seen(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from b import g\n    import c.d\n")
    assert imports_of(tmp_path / "a.py", {"a", "b", "c", "e"}) == {"b", "c"}


def test_no_import_circle_among_the_modules():
    graph = import_graph()
    assert {"features", "metrics", "model", "data_loader", "vocabulary"} <= set(graph)
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_entry_points_never_import_each_other(name):
    assert not import_graph()[name] & (ON_TOP - {name})


def test_the_library_never_imports_an_entry_point():
    graph = import_graph()
    for name, deps in graph.items():
        if name not in ON_TOP:
            assert not deps & ON_TOP, f"{name}.py imports {sorted(deps & ON_TOP)}, which sit above it"


def test_each_stage_lives_in_its_own_module():
    """The cache is defined in features.py, the scorers in metrics.py, not in the entry points."""
    defined = {name: {n.name for n in ast.parse(path.read_text()).body
                      if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
               for name, path in top_level_modules().items()}
    cache = {"compute_features", "cached_features", "cache_key", "torch_decoded_batches", "atomic_save"}
    scorers = {"score_captions", "ptb_tokenize", "caption_metrics", "_cider_d", "_bleu", "_rouge_l"}
    assert cache <= defined["features"] and not cache & defined["train"]
    assert scorers <= defined["metrics"] and not scorers & (defined["evaluate"] | defined["train"])
    assert {"autocast", "caption_batch", "latest_checkpoint"} <= defined["model"]
    # The downloads sit beside the readers, on the data floor, in their own module.
    downloads = {"download", "fetch", "extract", "already_there"}
    assert downloads <= defined["downloads"] and not downloads & defined["data_sources"]
    assert "detect" in defined["data_sources"] and "downloads" not in import_graph()["data_sources"]
    # The model card and the captioning object sit in the library, used by the entry points and hubconf.py.
    assert {"write_card", "add_scores", "trained_on"} <= defined["model_card"]
    assert "ImageCaptioner" in defined["captioner"] and not {"ImageCaptioner", "write_card"} & defined["caption"]
