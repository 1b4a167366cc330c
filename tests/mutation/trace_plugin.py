"""A pytest plugin (``-p trace_plugin``) recording which fm_ref functions each test calls.

Writes ``{nodeid: {"funcs": ["<module>.f", "<module>.C.m", ...], "seconds": s}}`` per
source file to the JSON file named by FM_REF_TRACE_OUT. The sampler runs a mutant inside
function F only against the tests that call F (a test that never executes F cannot
observe a change in it), fastest first; a mutant outside every function (module or
class body, evaluated at import) runs against all the mapped tests.
"""
import json
import os
import sys
import threading
import time

import pytest

_OUT = os.environ.get("FM_REF_TRACE_OUT")
_ROOT = os.path.join(os.getcwd(), "fm_ref") + os.sep
_records = {}
_current = set()


def _profile(frame, event, arg):
    if event == "call":
        code = frame.f_code
        if code.co_filename.startswith(_ROOT):
            _current.add((code.co_filename, code.co_qualname))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    _current.clear()
    sys.setprofile(_profile)
    threading.setprofile(_profile)
    start = time.perf_counter()
    try:
        yield
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
        funcs = {}
        for filename, qualname in _current:
            rel = os.path.relpath(filename, os.getcwd())
            name = "<module>." + qualname.replace("<locals>.", "")
            funcs.setdefault(rel, []).append(name)
        _records[item.nodeid] = {"funcs": {k: sorted(v) for k, v in funcs.items()},
                                 "seconds": time.perf_counter() - start}


def pytest_sessionfinish(session):
    if _OUT:
        with open(_OUT, "w") as f:
            json.dump(_records, f, indent=0)
