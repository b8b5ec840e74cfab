"""Execute the analysis notebooks end to end (nbclient), so a broken notebook fails CI.

Each notebook runs in a fresh temporary working directory and, as its last cell, writes
its `results` dict as JSON to the path in FOCUSLIB_NB_RESULTS; the checks below read it.
Each notebook takes about 1-1.5 minutes on 2 CPU cores.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TIMEOUT_S = 300  # whole-notebook budget; nbclient's own timeout is per cell


# the models the notebooks study (FOCUSLIB_NB_MODEL) and the prompts per setting in CI (FOCUSLIB_NB_PROMPTS;
# None: the notebook's own 512 / 128): the regime model decodes 32-token blocks, so it gets fewer prompts
MODELS = {"tiny-sdar": None, "tiny-sdar-b32": "96"}


def run_notebook(name: str, tmp_path: Path, monkeypatch, model: str = "tiny-sdar") -> dict:
    """Execute notebooks/<name> on `model` in tmp_path and return the JSON results it wrote."""
    out = tmp_path / "results.json"
    monkeypatch.setenv("FOCUSLIB_NB_RESULTS", str(out))
    monkeypatch.setenv("FOCUSLIB_NB_MODEL", model)
    if MODELS[model] is not None:
        monkeypatch.setenv("FOCUSLIB_NB_PROMPTS", MODELS[model])
    monkeypatch.setenv("MPLBACKEND", "Agg")
    repo = str(NOTEBOOKS.parent)  # so the kernel imports this checkout's focuslib and policies
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    assert out.exists(), "the notebook's last cell did not write its results"
    results = json.loads(out.read_text())
    assert results["runtime_s"] < TIMEOUT_S, results["runtime_s"]
    assert results["model"] == model
    return results


def is_prob(x) -> bool:
    return isinstance(x, (int, float)) and 0.0 <= x <= 1.0


def assert_ci(triple) -> None:
    est, lo, hi = triple
    assert all(is_prob(v) for v in triple), triple
    assert lo <= est <= hi, triple


@pytest.mark.parametrize("model", list(MODELS))
def test_importance_vs_decodability_notebook(tmp_path, monkeypatch, model):
    r = run_notebook("importance_vs_decodability.ipynb", tmp_path, monkeypatch, model)
    for setting in ("threshold", "one_per_step"):
        s = r[setting]
        assert s["n_rows"] > 100 and 0 < s["decodable_rate"] < 1
        for sig in ("imp0", "imp1", "delta", "delta_z", "confidence"):
            assert_ci(s[f"auc_{sig}"])
        for key in ("spearman_delta", "point_biserial_delta"):
            est, lo, hi = s[key]
            assert -1 <= lo <= est <= hi <= 1
        recalls = [s["keep_rule"][a]["recall"] for a in ("1.0", "1.5", "2.0")]
        assert all(is_prob(v) for v in recalls) and recalls == sorted(recalls)  # a larger budget keeps more
    # under Threshold(0.9) the commit rule is confidence itself, so confidence must rank well
    assert r["threshold"]["auc_confidence"][0] > 0.9
    for sig in ("imp0", "imp1", "delta", "delta_z", "confidence"):
        assert_ci(r["tiny_llada_one_per_step"][f"auc_{sig}"])


@pytest.mark.parametrize("model", list(MODELS))
def test_noise_model_notebook(tmp_path, monkeypatch, model):
    r = run_notebook("noise_model.ipynb", tmp_path, monkeypatch, model)
    for setting in ("threshold", "one_per_step"):
        s = r[setting]
        assert s["n_noise"] >= 50 and s["n_decodable"] >= 50
        assert_ci(s["auc_delta"])
        for column in ("fit_delta", "fit_delta_z"):
            f = s[column]
            assert math.isfinite(f["mu"]) and f["sigma"] > 0 and f["n"] >= 30
            assert is_prob(f["ks_pvalue"])
            assert 0.01 <= f["ad_pvalue"] <= 0.15 and f["ad_statistic"] > 0  # interpolated table range
        assert abs(s["fit_delta_z"]["mu"]) < 1 and 0.3 < s["fit_delta_z"]["sigma"] < 1.5  # z units
        miss = s["miss"]
        assert {"1.0", "1.5", "2.0"} <= set(miss)
        for alpha, m in miss.items():
            for key in ("observed", "predicted (agreeing steps)", "replay (agreeing steps)",
                        "predicted (all steps)", "replay (all steps)"):
                assert is_prob(m[key]), (alpha, key, m[key])
            assert m["observed_lo"] <= m["observed"] <= m["observed_hi"]
            # on the steps where both runs agree the decoder's FOCUS keeps what the offline keep
            # rule keeps, so replaying the rule reproduces the observation (exact in our runs;
            # the slack only allows a rare float tie broken differently)
            assert m["replay (agreeing steps)"] == pytest.approx(m["observed"], abs=0.01)
        observed = [miss[a]["observed"] for a in sorted(miss, key=float)]
        assert observed[0] >= observed[-1]  # more budget, fewer misses
        for target, cal in s["calibration"].items():
            a = cal["alpha (predicted)"]
            assert math.isnan(a) or a >= 1.0
