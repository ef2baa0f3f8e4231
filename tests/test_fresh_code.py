"""Fresh code on the workers (gearnb/pyexec/usercode.py): a module of the user's reaches the
workers as the caller has it - from a folder only the caller has on sys.path, and after an edit
and a reload, on every worker at once, never mixed with a copy a task process imported before;
a module a task imports by name is read again once its file changed. Real worker processes
behind a real job server (gearnb.local), whose task processes live across the maps."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import time
import uuid

import pytest

import gearnb


def write(path, source: str) -> None:
    path.write_text(textwrap.dedent(source))
    importlib.invalidate_caches()


@pytest.fixture
def unique_name():
    name = f"mylib_{uuid.uuid4().hex[:8]}"
    yield name
    sys.modules.pop(name, None)


def test_a_module_on_a_folder_only_the_caller_has_and_edited_between_maps(tmp_path, monkeypatch, unique_name):
    folder = tmp_path / "only-here"
    folder.mkdir()
    module_file = folder / f"{unique_name}.py"
    write(module_file, """
        OFFSET = 1
        def f(x):
            return x + OFFSET
    """)
    monkeypatch.syspath_prepend(str(folder))  # the caller's sys.path; the workers never see it
    mylib = importlib.import_module(unique_name)
    with gearnb.local(workers=2) as ex:
        first = ex.gmap(lambda x: (mylib.f(x), os.getpid()), range(8), chunksize=1)
        assert [v for v, _ in first] == [x + 1 for x in range(8)]
        task_pids = {pid for _, pid in first}
        # Edited, with a new function, and reloaded in the caller: every worker runs the new
        # version at once (their task processes ran the old one a moment ago).
        write(module_file, """
            OFFSET = 100
            def f(x):
                return x + OFFSET
            def f2(x):
                return -x
        """)
        importlib.reload(mylib)
        second = ex.gmap(lambda x: (mylib.f(x), os.getpid()), range(8), chunksize=1)
        assert [v for v, _ in second] == [x + 100 for x in range(8)]  # not [1, 101, 2, 102, ...]
        assert ex.gmap(mylib.f2, range(3)) == [0, -1, -2]  # a function added by the edit
        # Edited on disk but not reloaded: the workers run what the caller runs.
        write(module_file, """
            OFFSET = 10000
            def f(x):
                return x + OFFSET
        """)
        third = ex.gmap(mylib.f, range(8), chunksize=1)
        assert third == [mylib.f(x) for x in range(8)] == [x + 100 for x in range(8)]
        assert len(task_pids | {pid for _, pid in second}) == 2  # the same two task processes
        assert task_pids == {pid for _, pid in second}


def test_a_module_a_task_imports_by_name_is_read_again_when_its_file_changes(tmp_path, monkeypatch, unique_name):
    monkeypatch.chdir(tmp_path)  # the local cluster's workers import from the caller's folder
    module_file = tmp_path / f"{unique_name}.py"
    write(module_file, "VALUE = 1\n")
    source = f"def g(x):\n    import {unique_name}\n    return {unique_name}.VALUE, __import__('os').getpid()\n"
    namespace: dict = {}
    exec(compile(source, "<notebook cell>", "exec"), namespace)  # a function of the notebook's
    g = namespace["g"]
    with gearnb.local(workers=2) as ex:
        first = ex.gmap(g, range(6), chunksize=1)
        assert [v for v, _ in first] == [1] * 6
        write(module_file, "VALUE = 22\n")  # another size: a changed file whatever the clock
        second = ex.gmap(g, range(6), chunksize=1)
        assert [v for v, _ in second] == [22] * 6  # no task process kept its old copy
        assert {p for _, p in first} == {p for _, p in second}  # the same task processes


def test_an_edit_saved_while_the_importing_task_runs_is_seen_by_the_next_task(tmp_path, monkeypatch, unique_name):
    monkeypatch.chdir(tmp_path)
    module_file = tmp_path / f"{unique_name}.py"
    write(module_file, "VALUE = 1\n")
    imported, go = tmp_path / "imported", tmp_path / "go"
    source = (f"def g(imported, go):\n    import os, pathlib, time, {unique_name}\n"
              f"    pathlib.Path(imported).touch()\n"
              f"    for _ in range(3000):\n        if os.path.exists(go):\n            break\n        time.sleep(0.01)\n"
              f"    return {unique_name}.VALUE\n")
    namespace: dict = {}
    exec(compile(source, "<notebook cell>", "exec"), namespace)
    g = namespace["g"]
    with gearnb.local(workers=1) as ex:
        first = ex.submit(g, str(imported), str(go))
        for _ in range(3000):  # until the task imported the module
            if imported.exists():
                break
            time.sleep(0.01)
        write(module_file, "VALUE = 22\n")  # saved while the task that imported it runs
        go.touch()
        assert first.result(timeout=60) == 1
        assert ex.submit(g, str(imported), str(go)).result(timeout=60) == 22
        assert ex.submit(g, str(imported), str(go)).result(timeout=60) == 22


def test_the_rule_which_modules_travel_by_value():
    from gearnb.pyexec import usercode

    usercode.ship_user_modules()
    import json
    import msgpack

    assert usercode.user_module_file(json) is None  # the standard library
    assert usercode.user_module_file(msgpack) is None  # site-packages
    assert usercode.user_module_file(gearnb) is None  # gearnb itself, wherever it lies
    assert usercode.user_module_file(sys.modules[__name__]) == os.path.realpath(__file__)  # a test module
    assert __name__ in usercode.shipped_modules()
