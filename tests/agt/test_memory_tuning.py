"""The allocator tuning: applied once on Linux/glibc, and left alone when the user opts out."""
import os
import platform
import subprocess
import sys

import pytest

CHECK = "from pcert.runtime.memory import retain_freed_memory as r; print(r(), r())"


def _run(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PCERT_MALLOC_TUNING"}
    if env_value is not None:
        env["PCERT_MALLOC_TUNING"] = env_value
    return subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc tuning is Linux-only")
def test_tuning_applies_once_and_honours_opt_out():
    expected = "True True" if platform.libc_ver()[0] == "glibc" else "False False"
    assert _run(None) == expected
    assert _run("0") == "False False"
