"""A missing optional package fails with the feature that needs it and the pip extra that installs it."""
from __future__ import annotations

import sys

import pytest

from focuslib.extras import require


@pytest.mark.parametrize("module,extra", [("wandb", "loggers"), ("datasets", "tasks"), ("reasoning_gym", "tasks"),
                                          ("triton", "kernels")])
def test_missing_optional_package_names_its_extra(monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError, match=rf"the feature x needs the optional package '{module}': "
                                         rf"pip install 'focuslib\[{extra}\]'"):
        require(module, "the feature x")


def test_tasks_without_the_tasks_extra(monkeypatch):
    from focuslib.tasks import load_task

    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"focuslib.tasks needs .* pip install 'focuslib\[tasks\]'"):
        load_task("tribonacci", 2)


def test_present_package_is_returned():
    import math

    assert require("math", "anything") is math
