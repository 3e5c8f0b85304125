"""Explanations: which parts of an input a model's prediction rests on.

Attributions are computed with Captum on the PyTorch module a built-in model is rebuilt into
(spec.json + weights.safetensors, as the torch serving backend does; nothing unpickled), for
the probability of a target class: Integrated Gradients and occlusion over an image's pixels,
Integrated Gradients over a text's token embeddings (aligned with its words), sampled Shapley
values (or Integrated Gradients) over a table's features. Pure over tensors: the replica
serving a model runs it off its prediction path (nimbus.serving).
"""
