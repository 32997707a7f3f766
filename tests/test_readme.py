"""The README's Python tour runs as written (its blocks in order, in one namespace, from the project root)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = "demo-run/model.pt"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_a_python_tour():
    blocks = python_blocks()
    assert len(blocks) >= 4, "the README's quick tour lost its Python examples"
    assert any(DEMO_MODEL in b for b in blocks), "the tour no longer loads the demo's model"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    from clebsch.train.package import save_package

    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    for i, block in enumerate(python_blocks()):
        if DEMO_MODEL in block:
            # the demo's packaged model comes from `make demo`; stand in with the model the tour just built
            assert "model" in namespace, "the tour loads a model before building one"
            path = save_package(namespace["model"], tmp_path / "model.pt")
            block = block.replace(DEMO_MODEL, str(path))
        try:
            exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as err:  # the block's own text names the failing line
            pytest.fail(f"README.md python block {i + 1} failed: {type(err).__name__}: {err}\n{block}")
    out = namespace["out"]
    assert out["energy"].shape == (4,) and out["forces"].shape == (36, 3) and out["dipole"].shape == (4, 3)
    assert namespace["atoms"].get_forces().shape == (9, 3)
