"""The OpenMP spin tuning: set before torch loads (the user's own value wins), a no-op after."""
import os
import subprocess
import sys

CHECK = ("import os, sys; {pre}from pcert.openmp import shorten_openmp_spinning as s; "
         "print(s(), os.environ.get('GOMP_SPINCOUNT'))")


def _run(pre: str = "", user: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    if user is not None:
        env["GOMP_SPINCOUNT"] = user
    code = CHECK.format(pre=pre)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_spin_count_is_set_before_torch_loads_and_never_overrides_the_user():
    assert _run() == "True 30000"
    assert _run(user="5") == "True 5"
    assert _run(pre="import torch; ") == "False None"


def test_the_cli_sets_it_before_running_a_command(tmp_path):
    code = ("import os, pcert.cli as c; c._dispatch = lambda a: print(os.environ.get('GOMP_SPINCOUNT')) or 0; "
            "c.main(['compile', 'x.pcert'])")
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "30000"
