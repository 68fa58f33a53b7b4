"""Federated learning, the pure part: partitioning, aggregation, the reference model and trainer.

numpy and safetensors only; no database, network, file or clock access. The server's FL domain
(sessions, rounds, tasks) and the runner's executor call these functions:

- :mod:`.partitioning` splits a labelled data set between participants, deterministically for a
  seed (Flower Datasets' partitioners reproduced index for index where they overlap);
- :mod:`.aggregation`, :mod:`.robust`, :mod:`.fedopt` and the registry in :mod:`.aggregators`
  combine participants' models into the next global model;
- :mod:`.model` and :mod:`.train` are the numpy MLP / logistic regression a runner trains;
- :mod:`.tensors` encodes models as safetensors and checks uploaded updates.

Every refusal of caller input is an :class:`~.errors.FLConfigError` naming the field (or the
tensor) at fault, for the API layer to answer with a 422.
"""
