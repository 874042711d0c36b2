"""Record which lines of some source files a command executes (a line-coverage probe).

    python ci/mutation/lines_run.py OUT.json FILE[,FILE...] -m module args...
    python ci/mutation/lines_run.py OUT.json FILE[,FILE...] -c 'pytest args'

Runs ``python -m module args`` (or pytest with the given arguments) in this process under a
trace function that records, for each FILE (paths relative to the current directory), the
line numbers whose bytecode ran; writes ``{file: [lines]}`` to OUT.json. Used by
skip_unexecuted.py: a mutant confined to lines the unmutated test command never runs cannot
change what that command sees, so running it would only confirm a survivor.
"""

from __future__ import annotations

import json
import os
import runpy
import shlex
import sys
import threading


def main() -> int:
    out, files, mode, *rest = sys.argv[1:]
    wanted = {os.path.realpath(f): f for f in files.split(",")}
    seen: dict[str, set[int]] = {f: set() for f in wanted.values()}

    def local(frame, event, arg):
        if event == "line":
            seen[wanted[frame.f_code.co_filename]].add(frame.f_lineno)
        return local

    def global_(frame, event, arg):
        name = frame.f_code.co_filename
        if name not in wanted:
            real = os.path.realpath(name)
            if real not in wanted:
                return None
            wanted[name] = wanted[real]
        seen[wanted[name]].add(frame.f_lineno)
        return local

    threading.settrace(global_)
    sys.settrace(global_)
    status = 0
    try:
        if mode == "-m":
            sys.argv = [rest[0], *rest[1:]]
            runpy.run_module(rest[0], run_name="__main__", alter_sys=True)
        else:
            import pytest

            status = int(pytest.main(shlex.split(rest[0])))
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.settrace(None)
        threading.settrace(None)  # type: ignore[arg-type]
        with open(out, "w") as fh:
            json.dump({f: sorted(v) for f, v in seen.items()}, fh)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
