"""Every citation of a derivation in the code and tests (the file under derivations/ and
its tag in parentheses) resolves: the file exists and holds the tag as a LaTeX \\tag.
A citation that nothing checks goes stale."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CITATION = re.compile(r"derivations/([0-9A-Za-z_-]+\.md)(?: \(([A-Za-z]+\.[0-9]+[a-z]?)\))?")


def find_citations(text):
    """(file, tag or None) for every citation in a text."""
    return [(m.group(1), m.group(2)) for m in CITATION.finditer(text)]


def unresolved(citations, root=ROOT):
    """The citations whose file or tag does not exist under ``root``."""
    bad = []
    for fname, tag in citations:
        path = root / "derivations" / fname
        if not path.is_file():
            bad.append(f"{fname}: no such file")
        elif tag is not None and f"\\tag{{{tag}}}" not in path.read_text(encoding="utf-8"):
            bad.append(f"{fname} ({tag}): no \\tag{{{tag}}}")
    return bad


def _sources():
    """Every Python file of the package and the tests."""
    for folder in ("fm_ref", "tests"):
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_every_citation_resolves():
    bad = []
    for src in _sources():
        for item in unresolved(find_citations(src.read_text(encoding="utf-8"))):
            bad.append(f"{src.relative_to(ROOT)}: {item}")
    assert not bad, "unresolved citations:\n" + "\n".join(bad)


def test_the_code_cites_derivations():
    cited = [c for src in (ROOT / "fm_ref").rglob("*.py") for c in find_citations(src.read_text(encoding="utf-8"))]
    assert len(cited) > 20


def test_the_check_rejects_a_missing_tag_and_file():
    # assembled at run time, so that the source itself holds no broken citation
    folder = "derivations" + "/"
    fake = find_citations(f"see {folder}01-gaussian-paths.md (PATH.999) and {folder}99-none.md (X.1)")
    assert len(unresolved(fake)) == 2


@pytest.mark.parametrize("path", sorted((ROOT / "derivations").glob("*.md")), ids=lambda p: p.name)
def test_tags_are_unique_within_a_file(path):
    tags = re.findall(r"\\tag\{([^}]+)\}", path.read_text(encoding="utf-8"))
    assert len(tags) == len(set(tags)), f"duplicate tags in {path.name}"


TEST_REFERENCE = re.compile(r"(tests/test_[a-z0-9_]+\.py)::(test_[A-Za-z0-9_]+)")


def missing_tests(text, root=ROOT):
    """The `tests/test_x.py::test_name` references in a text that name no such test."""
    bad = []
    for m in TEST_REFERENCE.finditer(text):
        path = root / m.group(1)
        if not path.is_file() or not re.search(rf"def {m.group(2)}\b", path.read_text(encoding="utf-8")):
            bad.append(m.group(0))
    return bad


def test_every_test_named_in_the_docs_exists():
    """The derivations' 'Checked by' lines and the README's tour name real tests."""
    docs = sorted((ROOT / "derivations").glob("*.md")) + [ROOT / "README.md"]
    bad = [f"{d.name}: {ref}" for d in docs for ref in missing_tests(d.read_text(encoding="utf-8"))]
    assert not bad, "stale test references:\n" + "\n".join(bad)


def test_the_test_reference_check_rejects_a_missing_test():
    assert missing_tests("tests/test_losses.py::test_that_does_not_exist") != []
    assert missing_tests("tests/test_losses.py::test_gradient_gap_shrinks_as_nodes_are_added") == []


CODE_NAME = re.compile(r"`(fm_ref(?:\.\w+)+)(?:\([^`]*\))?`")
CODE_PATH = re.compile(r"`(fm_ref/[\w/]+\.py)")


def missing_code(text, root=ROOT):
    """The `fm_ref.module.name` and `fm_ref/file.py` references in a text that name nothing:
    the longest importable module prefix, then attributes."""
    import importlib

    bad = [m.group(1) for m in CODE_PATH.finditer(text) if not (root / m.group(1)).is_file()]
    for m in CODE_NAME.finditer(text):
        parts = m.group(1).split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
                break
            except ModuleNotFoundError:
                continue
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
        if obj is None:
            bad.append(m.group(1))
    return bad


def test_every_code_name_in_the_docs_exists():
    """The derivations' 'Implemented by' lines and the README name real modules, classes,
    functions and files."""
    docs = sorted((ROOT / "derivations").glob("*.md")) + [ROOT / "README.md"]
    bad = [f"{d.name}: {ref}" for d in docs for ref in missing_code(d.read_text(encoding="utf-8"))]
    assert not bad, "stale code references:\n" + "\n".join(bad)


def test_the_code_reference_check_rejects_a_missing_name():
    assert missing_code("`fm_ref.divergence.mlp_value_and_divergence_traced`") != []
    assert missing_code("`fm_ref/nonexistent.py`") != []
    assert missing_code("`fm_ref.divergence.MLPTrace.value` and `fm_ref/cnf.py`") == []
