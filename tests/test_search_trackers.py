"""A search logs to the Ray Tune callbacks of the recipe's trackers (train.log_with)."""

import pytest

from timm_tricks.errors import ConfigError


def test_a_search_logs_to_the_ray_callbacks_of_the_recipes_trackers():
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.logger import TBXLoggerCallback

    from timm_tricks.tune import tracker_callbacks

    tb, ml = tracker_callbacks(["tensorboard", "mlflow"], "digits-search")
    assert isinstance(tb, TBXLoggerCallback) and isinstance(ml, MLflowLoggerCallback)
    assert ml.experiment_name == "digits-search"
    assert tracker_callbacks(["none"], "x") == [] and tracker_callbacks([], "x") == []
    with pytest.raises(ConfigError, match="^train.log_with: aim is not installed; pip install aim, "):
        tracker_callbacks(["aim"], "x")  # not in the dev extra
