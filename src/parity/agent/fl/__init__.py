"""The runner's federated-learning side: the ``fl_train`` executor, its task config, fetching
by CID with hash checks, and runner-local data sets."""

from parity.agent.fl.config import FlTask, FlTaskError, parse_fl_task
from parity.agent.fl.data import FlDataError, LocalDatasets, load_local, parse_dataset_specs
from parity.agent.fl.executor import FlExecutor

__all__ = [
    "FlDataError",
    "FlExecutor",
    "FlTask",
    "FlTaskError",
    "LocalDatasets",
    "load_local",
    "parse_dataset_specs",
    "parse_fl_task",
]
