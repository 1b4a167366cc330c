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


# ------------------------------------------------------------------ the index of derivations/README.md
# Every \tag{…} of every derivation file NN-topic.md (files added later included) has a row
# `| tag | statement | code | tests |` in the README's section for its file, with at least one
# code name and one test; every code name resolves (import and getattr) and every test exists.

INDEX_TAG = re.compile(r"[A-Z]+\.[0-9]+[a-z]?")
DERIVATION_FILE = re.compile(r"\b([0-9]{2}-[\w-]+\.md)\b")
INDEX_TEST = re.compile(r"(?:tests/)?(test_\w+\.py)::(test_\w+)(?:\[([^\]]+)\])?")
PARAMETRISED = {("test_verify.py", "test_check_passes")}  # [name] is a registered check


def derivation_files(root=ROOT):
    """{file name: text} of every derivation file (not the README)."""
    return {p.name: p.read_text(encoding="utf-8")
            for p in sorted((root / "derivations").glob("[0-9][0-9]-*.md"))}


def index_rows(readme):
    """{file name: {tag: (code cell, tests cell)}}: a section starts at a heading that names a
    derivation file and holds the table rows up to the next heading."""
    sections, current = {}, None
    for line in readme.splitlines():
        if line.startswith("#"):
            m = DERIVATION_FILE.search(line)
            current = sections.setdefault(m.group(1), {}) if m else None
        elif current is not None and line.lstrip().startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            if len(cells) >= 4 and INDEX_TAG.fullmatch(cells[0]):
                current[cells[0]] = (cells[2], cells[3])
    return sections


def _strip_remarks(cell):
    while re.search(r"\([^()]*\)", cell):
        cell = re.sub(r"\([^()]*\)", "", cell)
    return cell.replace("`", "")


def code_items(cell):
    """The code names of a cell: separated by ',', ';' or '<br>', remarks in parentheses dropped."""
    return [i.strip() for i in re.split(r",|;|<br>", _strip_remarks(cell)) if i.strip()]


def _lookup(obj, parts):
    for part in parts:
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _from_package(parts):
    """The object fm_ref.<parts...>: the longest importable module prefix, then attributes."""
    import importlib

    for i in range(len(parts), -1, -1):
        try:
            module = importlib.import_module(".".join(["fm_ref", *parts[:i]]))
        except ModuleNotFoundError:
            continue
        return _lookup(module, parts[i:])
    return None


def unresolved_code(cell):
    """The names of a code cell that name nothing. A dotted name is looked up from fm_ref
    (then from the container of the name before it); a bare name in the container of the
    name before it (the module or class that holds it), or in fm_ref if it comes first."""
    import inspect

    bad, container = [], None
    for item in code_items(cell):
        name = re.sub(r"^fm_ref[./]", "", item).removesuffix(".py").replace("/", ".")
        if not re.fullmatch(r"\w+(\.\w+)*", name):
            bad.append(item)
            continue
        parts = name.split(".")
        obj = _from_package(parts) if (len(parts) > 1 or container is None) else None
        if obj is not None:
            holder = _from_package(parts[:-1])
        elif container is not None:
            obj, holder = _lookup(container, parts), _lookup(container, parts[:-1])
        if obj is None:
            bad.append(item)
            continue
        container = obj if inspect.ismodule(obj) else holder
    return bad


def _registered_checks():
    from fm_ref.verify import CHECKS, _load_all

    _load_all()
    return set(CHECKS)


def unresolved_tests(cell, root=ROOT):
    """The items of a tests cell that are not `file.py::test_name` (or a registered check's
    `test_check_passes[name]`) naming an existing test."""
    bad = []
    for item in (i.strip() for i in re.split(r"<br>|,", _strip_remarks(cell)) if i.strip()):
        m = INDEX_TEST.fullmatch(item)
        path = root / "tests" / m.group(1) if m else None
        if m is None or not path.is_file() or not re.search(rf"^\s*def {m.group(2)}\(", path.read_text(encoding="utf-8"), re.M):
            bad.append(item)
        elif m.group(3) is not None and ((m.group(1), m.group(2)) not in PARAMETRISED or m.group(3) not in _registered_checks()):
            bad.append(item)
    return bad


def index_problems(readme, files, root=ROOT):
    """Every way the index fails the files: a tag without a row, a row without a tag, a row
    without code or tests, a code name or a test that does not resolve."""
    rows, bad = index_rows(readme), []
    for fname, text in files.items():
        tags = re.findall(r"\\tag\{([^}]+)\}", text)
        if tags and fname not in rows:
            bad.append(f"{fname}: no section in derivations/README.md")
            continue
        section = rows.get(fname, {})
        bad += [f"{fname} ({t}): no row in the index" for t in tags if t not in section]
        bad += [f"{fname} ({t}): a row, but no \\tag{{{t}}} in the file" for t in section if t not in tags]
        for tag, (code, tests) in section.items():
            if not code_items(code):
                bad.append(f"{fname} ({tag}): no code")
            if not _strip_remarks(tests).strip():
                bad.append(f"{fname} ({tag}): no test")
            bad += [f"{fname} ({tag}): code {c!r} does not resolve" for c in unresolved_code(code)]
            bad += [f"{fname} ({tag}): test {t!r} does not exist" for t in unresolved_tests(tests, root)]
    return bad


def test_every_tag_is_indexed_with_code_and_tests():
    readme = (ROOT / "derivations" / "README.md").read_text(encoding="utf-8")
    bad = index_problems(readme, derivation_files())
    assert not bad, "derivations/README.md index:\n" + "\n".join(bad)


def test_the_index_check_rejects_missing_rows_and_stale_references():
    files = {"01-x.md": "$$ a \\tag{PATH.1} $$ $$ b \\tag{PATH.2} $$", "99-new.md": "$$ c \\tag{NEW.1} $$"}
    good = "| PATH.1 | s | paths.AffinePath.sample, alpha_t | test_paths.py::test_endpoint_values |"
    readme = f"### [01-x.md](01-x.md)\n\n| tag | statement | code | tests |\n| --- | --- | --- | --- |\n{good}\n"
    bad = index_problems(readme, files)
    assert "01-x.md (PATH.2): no row in the index" in bad
    assert "99-new.md: no section in derivations/README.md" in bad and len(bad) == 2
    # a row with a tag the file lacks, a missing name, a missing test, a check that is not registered
    for row, expected in (
            ("| PATH.3 | s | paths.CondOT | test_paths.py::test_endpoint_values |", "no \\tag{PATH.3}"),
            ("| PATH.2 | s | paths.AffinePath.sample, no_such_method | test_paths.py::test_endpoint_values |", "'no_such_method'"),
            ("| PATH.2 | s | paths.NoSuchPath | test_paths.py::test_endpoint_values |", "'paths.NoSuchPath'"),
            ("| PATH.2 | s | paths.CondOT | test_paths.py::test_that_does_not_exist |", "does not exist"),
            ("| PATH.2 | s | paths.CondOT | test_verify.py::test_check_passes[no-such-check] |", "does not exist"),
            ("| PATH.2 | s | paths.CondOT | test_paths.py::test_endpoint_values[0] |", "does not exist"),
            ("| PATH.2 | s | (in the tests) | test_paths.py::test_endpoint_values |", "no code"),
            ("| PATH.2 | s | paths.CondOT |  |", "no test")):
        problems = index_problems(readme + row + "\n", {"01-x.md": files["01-x.md"]})
        assert any(expected in p for p in problems), (row, problems)
    fixed = readme + "| PATH.2 | s | paths.CondOT; verify.foundation.residual_of_continuity | test_verify.py::test_check_passes[tweedie] |\n"
    assert index_problems(fixed, {"01-x.md": files["01-x.md"]}) == []
