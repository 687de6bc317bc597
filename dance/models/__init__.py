"""Model weights, for policy and reward plugins: finding a checkpoint and checking its files
(:mod:`dance.models.model_layout`), what trains and how it saves (:mod:`dance.models.finetune`),
frozen parts kept off the GPU (:mod:`dance.models.offload`); and for the GPU suite, a policy's
benchmark spec, full-size networks with random weights and training-memory estimates."""
