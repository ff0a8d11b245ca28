"""Many devices: the one place that knows about ``torch.distributed``.

- :mod:`.world` — the process group (from ``torchrun``'s environment; gloo on CPU, NCCL on GPU, a gloo
  group for control), rank-0 broadcast of bytes and commands (JSON + raw tensors, never pickle),
  timeouts on every collective;
- :mod:`.comm` — :class:`~.comm.TorchShardComm`, the collectives of the sharded codec
  (:mod:`gauntlet.sparseloco.sharding`) and of 2-D (replicate × shard) meshes;
- :mod:`.fsdp` — ``fully_shard`` wiring (each transformer block, then the root), the checks that every
  parameter is ``Shard(0)``, local shards, full state dicts for exports and checkpoints;
- :mod:`.checkpoint` — node state through ``torch.distributed.checkpoint`` (atomic, re-shardable).

:mod:`gauntlet.sparseloco` never imports this package: the maths takes a layout and a
:class:`~gauntlet.sparseloco.sharding.ShardComm`; this package supplies them.
"""
