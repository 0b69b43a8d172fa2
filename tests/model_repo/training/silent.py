"""A test model with a layer that does nothing: the pruning and distillation tests' known answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def with_a_silent_layer(tiny: Path) -> Any:
    """The tiny checkpoint made 4 layers deep (layers 2 and 3 copies of layer 1), its layer 2 a no-op
    (zero output projections), in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny)).eval()
    extra = [type(model.model.layers[0])(model.config, i) for i in (2, 3)]
    for layer in extra:
        layer.load_state_dict(model.model.layers[1].state_dict())
    model.model.layers.extend(extra)
    model.config.num_hidden_layers = 4
    with torch.no_grad():
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    return model
