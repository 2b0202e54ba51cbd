"""Every module imports first, as a Ray worker imports the module of a function it unpickles."""

import subprocess
import sys

SCRIPT = """
import importlib, pkgutil, sys
import w2s_ray
names = sorted(m.name for m in pkgutil.walk_packages(w2s_ray.__path__, "w2s_ray."))
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m.startswith("w2s_ray.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except ImportError as e:
        failed.append(f"{name}: {e}")
print(len(names))
print("\\n".join(failed))
"""


def test_each_module_imports_first_without_a_cycle():
    """A cycle through a package's __init__ (w2s_ray.search -> w2s_ray.stages -> back) broke every search trial's
    process once while the driver, which had imported the package first, ran fine."""
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout.split("\n")
    assert int(out[0]) > 40 and not any(out[1:]), out
