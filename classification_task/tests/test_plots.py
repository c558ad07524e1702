"""Plots are written as non-empty PNG files; matplotlib comes with a plain install."""

import tomllib
from pathlib import Path

import numpy as np

from classification_task.evaluation import plots

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
    written = plots.save_all_plots(tmp_path, np.zeros(50), np.linspace(0, 1, 50), {"0.5": 0.5},
                                   log_history=[{"train_runtime": 1.0, "epoch": 1.0}])
    assert [path.name for path in written] == ["roc.png", "pr.png", "reliability.png"]
    for path in written:
        assert_png(path)


def test_training_curves_show_what_a_researcher_reads_not_every_logged_key():
    history = [*LOG_HISTORY,
               {"eval_loss": 0.5, "eval_f1": 0.4, "eval_balanced_accuracy": 0.7, "eval_mcc": 0.3,
                "eval_threshold": 0.5, "eval_tp": 3, "eval_brier": 0.2, "epoch": 0.5, "step": 50}]
    assert plots.training_curve_panels(history) == [
        ("loss (train, validation)", ["loss", "eval_loss"]), ("learning rate", ["learning_rate"]),
        ("validation ROC-AUC", ["eval_roc_auc"]), ("validation PR-AUC", ["eval_pr_auc"]),
        ("validation F1", ["eval_f1"]), ("validation balanced accuracy", ["eval_balanced_accuracy"])]
    # The metric that picks the best checkpoint gets a panel when it is not among those.
    panels = plots.training_curve_panels(history, metric_for_best="mcc")
    assert panels[-1] == ("validation mcc (picks the best checkpoint)", ["eval_mcc"])
    assert len(plots.training_curve_panels(history, metric_for_best="pr_auc")) == 6
    # Only panels with something logged.
    assert plots.training_curve_panels(LOG_HISTORY[:2]) == [("loss (train, validation)", ["loss"]),
                                                            ("learning rate", ["learning_rate"])]
    assert plots.training_curve_panels([{"train_runtime": 1.0, "epoch": 1.0, "step": 3}]) == []


def test_history_series_reads_numbers_per_step():
    series = plots._history_series(LOG_HISTORY)
    assert series["loss"] == ([10, 20, 30], [0.9, 0.7, 0.6])
    assert series["eval_roc_auc"] == ([20, 40], [0.71, 0.75])
    assert "epoch" not in series and "step" not in series


def test_training_curves_mark_the_best_checkpoint(tmp_path, monkeypatch):
    path = plots.plot_training_curves(tmp_path / "curves.png", LOG_HISTORY, best_step=40,
                                      metric_for_best="pr_auc")
    assert_png(path)
    figures = []
    monkeypatch.setattr(plots, "save_figure_atomic", lambda figure, path: figures.append(figure) or path)
    plots.plot_training_curves(tmp_path / "curves.png", LOG_HISTORY, best_step=40, metric_for_best="pr_auc")
    axes = [ax for ax in figures[0].axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["loss (train, validation)", "learning rate",
                                               "validation ROC-AUC", "validation PR-AUC"]
    for ax in axes:  # a dashed vertical line at the best step
        assert any(line.get_linestyle() == "--" and set(line.get_xdata()) == {40} for line in ax.lines)
    assert "step 40" in figures[0].get_suptitle() and "pr_auc" in figures[0].get_suptitle()
    assert plots.plot_training_curves(tmp_path / "none.png", [{"train_runtime": 1.0}]) is None


def test_a_plain_install_brings_matplotlib_and_pydicom():
    """`pip install -e .` on a fresh clone: the demo draws its plots and DICOMs can be read."""
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    required = {dep.split(">")[0].split("=")[0].split("<")[0].strip() for dep in pyproject["project"]["dependencies"]}
    assert {"matplotlib", "pydicom"} <= required
