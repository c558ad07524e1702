"""The run's start and end the localizer's train.py shares with the classifier's (common/training.py)."""

from localization_task import train
from localization_task.common.errors import DataError
from localization_task.common.training import start_run, user_error


def test_a_worker_traceback_ends_as_its_last_line_without_the_error_type(capsys):
    err = DataError("Caught DataError in DataLoader worker process 1.\nTraceback ...\n"
                    "localization_task.common.errors.DataError: b.png cannot be read: replace it.\n")
    assert user_error(err) == 2
    assert capsys.readouterr().err == "error: b.png cannot be read: replace it.\n"


def test_only_the_first_process_looks_for_an_earlier_run(tmp_path):
    config = train.TrainConfig(output_dir=str(tmp_path / "out"), checkpoint_dir=str(tmp_path / "ckpt"))
    (tmp_path / "ckpt" / "checkpoint-3").mkdir(parents=True)
    assert start_run(config, train.RESULT_FILES, look=False).earlier == []
    try:
        start_run(config, train.RESULT_FILES)
    except DataError as err:
        assert "earlier run" in str(err)
    else:
        raise AssertionError("a fresh run over an earlier run's checkpoints must be refused")


def test_training_arguments_keep_the_localizer_s_own_settings():
    args = train.training_arguments(train.TrainConfig(encoder_mode="full", weight_decay=0.01, eval_steps=7))
    assert args.weight_decay == 0.01 and args.ddp_find_unused_parameters is True
    assert args.save_steps == args.eval_steps == 7 and args.greater_is_better is True
    assert train.training_arguments(train.TrainConfig(encoder_mode="lora")).ddp_find_unused_parameters is False
