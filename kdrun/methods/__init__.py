"""Distillation methods: a registry, like models and datasets.

A method is one module in this package: a schema dataclass (its typed options, read from
`conf/loss/<name>.yaml`) and a builder registered with `@register_method`. The builder gets
the options and a `MethodContext` (the run's T and alpha, the student and teacher, a sample
input, the training-set size) and returns a `Method`: an nn.Module, so any trainable parts
(connectors, embeddings) are optimised with the student and its state (parameters and buffers
such as CRD's memory bank) is saved in `last.pt` and `checkpoint.pt`. A method declares the
named stages it reads (kdrun.models.stages), whether it needs the teacher, and summary keys.

The options' schemas are in kdrun.methods.params (no torch: the CLI checks `loss.*` before a run);
the registry, `Method` and `build_method` in kdrun.methods.base, which imports the method modules
when a method is first asked for. This package imports nothing itself.
"""
