"""The run's start and end both train.py share (common/training.py), the demo preset, and the
evaluation settings one function builds from a training config."""

import json
from types import SimpleNamespace

import pandas as pd
import pytest

from classification_task import train
from classification_task.common.errors import DataError
from classification_task.common.run_files import RUN_CONFIG_JSON
from classification_task.common.training import record_run, start_run, user_error
from classification_task.demo.preset import DEMO_DEFAULTS, ENCODER_DEMO_DEFAULTS, demo_defaults
from classification_task.evaluate import EvaluationSettings


def _config(tmp_path, **changes) -> train.TrainConfig:
    return train.TrainConfig(output_dir=str(tmp_path / "out"), checkpoint_dir=str(tmp_path / "ckpt"), **changes)


def test_a_worker_traceback_ends_as_its_last_line_without_the_error_type(capsys):
    err = DataError("Caught DataError in DataLoader worker process 0.\nTraceback ...\n"
                    "classification_task.common.errors.DataError: a.png cannot be read: replace it.\n")
    assert user_error(err) == 2
    assert capsys.readouterr().err == "error: a.png cannot be read: replace it.\n"


def test_a_fresh_run_over_an_earlier_one_is_refused_unless_it_does_not_look(tmp_path):
    config = _config(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.json").write_text("{}")
    with pytest.raises(DataError, match="earlier run"):
        start_run(config, train.RESULT_FILES)
    assert start_run(config, train.RESULT_FILES, look=False).earlier == []
    overwrite = start_run(_config(tmp_path, overwrite=True), train.RESULT_FILES)
    assert overwrite.resume_from is None and overwrite.earlier == [tmp_path / "out" / "metrics.json"]


def test_an_evaluation_alone_ignores_the_checkpoints_and_resumes_nothing(tmp_path):
    (tmp_path / "ckpt" / "checkpoint-2").mkdir(parents=True)
    start = start_run(_config(tmp_path, eval_only=True), train.RESULT_FILES, train=False)
    assert start.resume_from is None and start.earlier == []


def test_record_run_replaces_the_earlier_run_then_writes_split_and_config(tmp_path):
    config = _config(tmp_path, overwrite=True)
    (tmp_path / "out").mkdir()
    old = tmp_path / "out" / "metrics.json"
    old.write_text("{}")
    record_run(config, [old], pd.DataFrame({"file_name": ["a.png"], "split": ["test"]}))
    assert not old.exists()
    assert (tmp_path / "out" / "split.csv").read_text() == "file_name,split\na.png,test\n"
    assert json.loads((tmp_path / "out" / RUN_CONFIG_JSON).read_text())["config"]["overwrite"] is True
    (tmp_path / "out" / "split.csv").unlink()
    record_run(config, [], None)
    assert not (tmp_path / "out" / "split.csv").exists()


def test_training_arguments_keep_the_classifier_s_own_settings(tmp_path):
    args = train.training_arguments(_config(tmp_path, max_grad_norm=0.7, eval_steps=5, metric_for_best="loss"))
    assert args.max_grad_norm == 0.7 and args.activation_checkpointing is True
    assert args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert args.save_steps == args.eval_steps == 5 and args.greater_is_better is False
    assert args.lr_scheduler_type == "linear" and args.load_best_model_at_end


def test_the_demo_preset_follows_the_model_kind_on_the_command_line():
    assert demo_defaults(["--demo"]) is DEMO_DEFAULTS
    assert demo_defaults(["--demo", "--model_kind=encoder"]) is ENCODER_DEMO_DEFAULTS
    assert demo_defaults(["--model_kind", "encoder", "--demo"])["encoder_mode"] == "full"


def test_evaluation_settings_of_a_zero_shot_evaluation(tmp_path):
    config = _config(tmp_path, eval_only=True, bootstrap=7, eval_batch_size=3)
    config.model_kind = "medgemma"
    settings = EvaluationSettings.for_run(config)
    assert settings.model_name == "zero_shot" and settings.zero_shot is False
    assert settings.best is None and settings.log_history is None
    assert (settings.n_boot, settings.batch_size, settings.out_dir) == (7, 3, tmp_path / "out")
    config.adapter = "adapter"
    settings = EvaluationSettings.for_run(config)
    assert settings.model_name == "fine_tuned" and settings.zero_shot is True


def test_evaluation_settings_of_a_trained_run_take_its_best_checkpoint(tmp_path):
    config = _config(tmp_path, zero_shot=False, metric_for_best="roc_auc")
    state = SimpleNamespace(best_global_step=4, best_model_checkpoint=None, best_metric=0.8, log_history=[{"a": 1}])
    settings = EvaluationSettings.for_run(config, SimpleNamespace(state=state))
    assert settings.best == {"step": 4, "metric": "roc_auc", "value": 0.8}
    assert settings.log_history == [{"a": 1}] and settings.zero_shot is False and settings.model_name == "fine_tuned"
