"""Plots are written as non-empty PNG files; without matplotlib, save_all_plots degrades to []."""

import sys

import numpy as np
import pytest

from classification_task import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

LOG_HISTORY = [  # the shape of transformers Trainer.state.log_history
    {"loss": 0.9, "grad_norm": 3.1, "learning_rate": 1e-4, "epoch": 0.1, "step": 10},
    {"loss": 0.7, "grad_norm": 2.5, "learning_rate": 2e-4, "epoch": 0.2, "step": 20},
    {"eval_loss": 0.65, "eval_roc_auc": 0.71, "eval_pr_auc": 0.2, "eval_runtime": 3.0,
     "eval_samples_per_second": 10.0, "eval_steps_per_second": 2.0, "epoch": 0.2, "step": 20},
    {"loss": 0.6, "grad_norm": 2.0, "learning_rate": 1e-4, "epoch": 0.3, "step": 30},
    {"eval_loss": 0.6, "eval_roc_auc": 0.75, "eval_pr_auc": 0.25, "epoch": 0.4, "step": 40},
    {"train_runtime": 12.0, "train_loss": 0.7, "epoch": 0.4, "step": 40},
]


def scores(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.1).astype(int)
    return y, np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1)


def assert_png(path):
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_save_all_plots_writes_every_png(tmp_path):
    pytest.importorskip("matplotlib")
    y, p = scores()
    written = plots.save_all_plots(tmp_path / "plots", y, p, {"0.5": 0.5, "max_f1": 0.62},
                                   log_history=LOG_HISTORY)
    names = [path.name for path in written]
    assert names == ["roc.png", "pr.png", "reliability.png", "training_curves.png"]
    for path in written:
        assert_png(path)
    # Atomic writes leave no temp files behind.
    assert sorted(f.name for f in (tmp_path / "plots").iterdir()) == sorted(names)


def test_plots_survive_a_single_class_and_an_empty_history(tmp_path):
    pytest.importorskip("matplotlib")
    written = plots.save_all_plots(tmp_path, np.zeros(50), np.linspace(0, 1, 50), {"0.5": 0.5},
                                   log_history=[{"train_runtime": 1.0, "epoch": 1.0}])
    assert [path.name for path in written] == ["roc.png", "pr.png", "reliability.png"]
    for path in written:
        assert_png(path)


def test_history_series_keeps_losses_and_eval_metrics():
    series = plots._history_series(LOG_HISTORY)
    assert set(series) == {"loss", "learning_rate", "eval_loss", "eval_roc_auc", "eval_pr_auc"}
    assert series["loss"] == ([10, 20, 30], [0.9, 0.7, 0.6])
    assert series["eval_roc_auc"] == ([20, 40], [0.71, 0.75])


def test_without_matplotlib_save_all_plots_warns_and_returns_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    y, p = scores()
    assert not plots.plots_available()
    with pytest.warns(UserWarning, match="pip install"):
        assert plots.save_all_plots(tmp_path, y, p, {"0.5": 0.5}) == []
    with pytest.raises(ImportError, match="pip install"):
        plots.plot_roc(tmp_path / "roc.png", y, p)
    assert list(tmp_path.iterdir()) == []
