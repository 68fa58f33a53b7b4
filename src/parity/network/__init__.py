"""The runner registry over HTTP: the runners domain (registry) composed with the task
queue's side of each runner event (``parity.tasks.runner_side``)."""
